"""Publish that always resumes: moving a finished result from its staging folder to the output, journaled.

The moves of a publish are written down first (``publish.json``: ``moving``, then ``published``), so that a run
killed anywhere in them is finished or undone by the next run on the output (:meth:`Publisher.recover`). The
previous output is kept in the staging folder (``replaced``) until the new one is in place, and removed only after
the journal says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable

from nisbflow.paths import join_protocol, protocol_of
from nisbflow.staging.markers import remove_tree
from nisbflow.staging.replace import check_replaceable

JOURNAL = "publish.json"
"""The publish journal: written before the first move of :meth:`Publisher.publish`, rewritten after the last one."""
RETIRED = "replaced"
"""Where :meth:`Publisher.publish` keeps the output it replaces until the new one is in place."""
MANIFEST = "manifest.json"
"""The run manifest (written by :class:`~nisbflow.staging.run.StagedRun`); a recovery that finds another run's
result published removes it, since its markers vouch for nothing now."""


def publish_step(step: str) -> None:
    """Called after each step of :meth:`Publisher.publish` (``moving``, ``retired``, ``moved``, ``published``) and
    of :func:`retire_staging` (``removed``, ``renamed``): a seam where the fault tests stop a process as a SIGKILL
    would."""


class Publisher:
    """The publish of one output: ``fs``, ``staging`` (the staging folder's path), ``name`` (the result's name in it),
    ``final`` (the output's path), and the replacement policy (``kind``, ``overwrite``, ``force``, see
    :func:`~nisbflow.staging.replace.check_replaceable`). ``output``: the output as the user named it, for messages."""

    def __init__(
        self,
        fs,
        staging: str,
        name: str,
        final: str,
        *,
        output: str,
        kind: str,
        overwrite: bool,
        force: bool,
        log: Callable[[str], None],
    ):
        self.fs, self.staging, self.name, self.final = fs, staging, name, final
        self.output, self.kind, self.overwrite, self.force, self.log = output, kind, overwrite, force, log
        self.staged, self.retired = f"{staging}/{name}", f"{staging}/{RETIRED}"

    def journal(self) -> dict | None:
        """The journal of an interrupted publish (None when there is none, or it does not parse)."""
        try:
            journal = json.loads(self.fs.cat_file(f"{self.staging}/{JOURNAL}"))
        except (FileNotFoundError, ValueError, OSError):
            return None
        return journal if isinstance(journal, dict) and journal.get("state") in ("moving", "published") else None

    def check_existing(self) -> bool:
        """:func:`check_replaceable` on the output as it was before any publish of a run on it began: an interrupted
        publish may have moved the old output into the staging folder, or put its own result in place."""
        journal, where = self.journal(), None
        if journal is not None:
            if not journal.get("had_output"):  # whatever is at the output now, that publish put there
                return False
            if journal.get("state") == "moving" and not self.fs.exists(self.final) and self.fs.exists(self.retired):
                where = join_protocol(self.fs, self.retired)
        return check_replaceable(self.output, self.kind, overwrite=self.overwrite, force=self.force, where=where)

    def publish(self, run_id: str | None) -> None:
        """Move the staged result (which must be there) to the output, replacing it when allowed, journaled."""
        fs = self.fs
        had_output = check_replaceable(self.output, self.kind, overwrite=self.overwrite, force=self.force)
        if fs.exists(self.retired):  # a leftover of a recovered publish: never the output of this run's inputs
            remove_tree(fs, self.retired)
        self._write_journal(run_id, "moving", had_output)
        if had_output:
            move(fs, self.final, self.retired)
            publish_step("retired")
        move(fs, self.staged, self.final)
        publish_step("moved")
        self._write_journal(run_id, "published", had_output)

    def _write_journal(self, run_id: str | None, state: str, had_output: bool) -> None:
        self.fs.pipe_file(
            f"{self.staging}/{JOURNAL}",
            json.dumps({"run_id": run_id, "state": state, "had_output": bool(had_output)}).encode(),
        )
        publish_step(state)

    def recover(self, journal: dict, same: bool) -> None:
        """Finish or undo a publish that a killed run left (its journal is there), before this run goes on.

        The same run (``same``: same identity) is put back where it was before its publish: its result into the
        staging folder, the old output back in place, so that it resumes with every block done and publishes again,
        redoing no block. Another run finds the old output back in place when the killed publish had not yet put its
        result there, and the killed run's result in place when it had; the old output is removed only once a result
        replaced it. Says what it did through ``log``."""
        fs, staged, final, retired = self.fs, self.staged, self.final, self.retired
        moved = not fs.exists(staged) and fs.exists(final)  # the result reached the output
        if same and moved:
            move(fs, final, staged)
            if journal.get("had_output") and fs.exists(retired) and journal.get("state") == "moving":
                move(fs, retired, final)
            self.log(f"recovering {self.output}: a publish of this run was interrupted; publishing it again")
        elif not moved and journal.get("had_output") and fs.exists(retired) and not fs.exists(final):
            move(fs, retired, final)
            self.log(
                f"recovering {self.output}: an interrupted publish had moved the previous output aside; it is "
                "back in place"
            )
        elif moved:
            self.log(
                f"recovering {self.output}: a run on it had published its result when it was interrupted; "
                "removing what it left"
            )
            with contextlib.suppress(FileNotFoundError):
                fs.rm(f"{self.staging}/{MANIFEST}")  # its markers vouch for nothing now
        if fs.exists(retired) and fs.exists(final):
            remove_tree(fs, retired)
        fs.rm(f"{self.staging}/{JOURNAL}")


def move(fs, source: str, destination: str) -> None:
    """Rename on a local disk (atomic), copy then delete elsewhere (fsspec's ``mv``)."""
    if protocol_of(fs) in ("file", "local"):
        os.replace(source, destination)
        return
    # object stores: copy every stored key, then delete them (fsspec's recursive mv also copies the folder
    # placeholders it lists, which S3 does not store, and fails on them)
    files = fs.find(source)
    fs.copy(files, [destination + path[len(source) :] for path in files])
    remove_tree(fs, source, files)


def retire_staging(fs, staging: str) -> None:
    """Remove a published run's staging folder: the output it replaced first, then the rest (on a local disk the
    folder is first renamed aside, so a kill half-way leaves no staging folder that a later run would read)."""
    retired = f"{staging}/{RETIRED}"
    if fs.exists(retired):
        remove_tree(fs, retired)
        publish_step("removed")
    if protocol_of(fs) in ("file", "local"):
        trash = f"{staging}.removing-{uuid.uuid4().hex[:8]}"
        os.replace(staging, trash)
        publish_step("renamed")
        staging = trash
    remove_tree(fs, staging)
