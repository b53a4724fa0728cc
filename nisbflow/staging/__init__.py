"""Staged, exclusive, resumable outputs: how every stage writes (the grid of blocks is :mod:`nisbflow.blocks`).

A :class:`StagedRun` (:mod:`~nisbflow.staging.run`) gives a stage one output path with these guarantees:

* **never over an input**: an output that equals, contains or lies inside any input is refused, whatever the flags;
* **never over foreign data**: ``overwrite`` replaces only an output nisbflow wrote (its zarr attributes say so);
  anything else needs ``force`` (both in :mod:`~nisbflow.staging.replace`);
* **exclusive**: a lock file (host, pid, start time) in the staging folder is held for the run; a second run on the
  same output fails at once, a lock left by a dead process on this host is reported and taken over;
* **resumable**: blocks finish by writing a marker; markers count only under a run manifest that matches this run's
  inputs (path, shape, dtype, chunking and a content fingerprint), checkpoint hash and settings, and only with the
  evidence their pass names (:class:`BlockwisePass`: an output this run created, whole chunks, scratch files; in
  :mod:`~nisbflow.staging.markers`). Anything else starts fresh and says why. :meth:`StagedRun.pending` is the one
  place a pass asks which of its blocks are done;
* **atomic publish**: the result is written in ``.<name>.nisbflow-run/`` next to the output and moved into place
  when complete, on local paths and fsspec URLs alike. An interrupted or failed run keeps the staging folder, which
  the next run on the same output resumes from or removes;
* **publish that always resumes**: the moves of a publish are journaled (``publish.json``); a run killed in them is
  finished or undone by the next run on the output (:meth:`Publisher.recover
  <nisbflow.staging.publish.Publisher.recover>`), which never removes the previous output before a result is in its
  place;
* **seen by every worker**: on a cluster that may not share this machine's files, the inputs, the checkpoint and the
  staging folder are checked on every worker first (:class:`~nisbflow.visibility.WorkerVisibility`).

Single files (a skeleton, a checkpoint, ``best.yaml``) are replaced whole through :func:`staged_output`
(:mod:`~nisbflow.staging.files`).
"""

from nisbflow.staging.files import staged_output, write_file
from nisbflow.staging.markers import (
    BlockPass,
    BlockwisePass,
    CreatedByRun,
    ScratchFiles,
    WholeChunks,
    store_block,
    write_marker,
)
from nisbflow.staging.replace import OutputOverlapsInputError, check_not_input, check_replaceable, written_by_nisbflow
from nisbflow.staging.run import InputChangedError, OutputLockedError, StagedRun


def default_log(message: str) -> None:
    """Where library calls report resumes, stale locks and discarded runs when no ``log`` is given: stderr."""
    import sys

    print(message, file=sys.stderr)


__all__ = [
    "BlockPass",
    "BlockwisePass",
    "CreatedByRun",
    "InputChangedError",
    "OutputLockedError",
    "OutputOverlapsInputError",
    "ScratchFiles",
    "StagedRun",
    "WholeChunks",
    "check_not_input",
    "check_replaceable",
    "default_log",
    "staged_output",
    "store_block",
    "write_file",
    "write_marker",
    "written_by_nisbflow",
]
