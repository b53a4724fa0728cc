"""Which outputs a run may write and replace: never an input, and over an existing output only one nisbflow wrote
(``--overwrite``) or anything with ``--force``. Used by :class:`~nisbflow.staging.run.StagedRun` and by commands that
check an output before a cluster starts."""

from __future__ import annotations

import os

import fsspec

from nisbflow.errors import NisbflowError, OutputExistsError
from nisbflow.paths import location as _location
from nisbflow.paths import storage_url


class OutputOverlapsInputError(NisbflowError):
    """An output would equal, contain or lie inside one of the run's inputs."""


def _same_file(a: str, b: str) -> bool:
    """Whether two existing local paths name one file or folder (same device and inode)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(output, inputs: dict, option: str | None = None) -> None:
    """Raise :class:`OutputOverlapsInputError` if ``output`` equals, contains or lies inside any of ``inputs``
    (``{role: path}``; None values are skipped): by resolved path (through symlinks), and for existing local paths by
    device and inode (a hard link, or a bind mount, of an input under another name). ``option``: how the command
    line names the output (``--json``), for the message. No flag lifts this."""
    named = f"{option} {output}" if option else f"output {output}"
    out_protocol, out_path = _location(output)
    for role, path in inputs.items():
        if path is None:
            continue
        protocol, where = _location(path)
        if protocol != out_protocol:
            continue
        if where == out_path:
            relation = "is"
        elif where.startswith(out_path + "/"):
            relation = "contains"
        elif out_path.startswith(where + "/"):
            relation = "lies inside"
        elif protocol == "file" and _same_file(out_path, where):
            raise OutputOverlapsInputError(
                f"{named} is the {role} {path} (the same file under another name): writing it would destroy an "
                "input; choose another output path (no flag overrides this)"
            )
        else:
            continue
        raise OutputOverlapsInputError(
            f"{named} {relation} the {role} {path}{' ' if relation == 'is' else ''}"
            f"{'(the input itself)' if relation == 'is' else ''}: writing it would destroy an input; "
            "choose another output path (no flag overrides this)"
        )


def written_by_nisbflow(path, kind: str | None) -> bool:
    """Whether an existing output is a ``kind`` output nisbflow wrote: a zarr array or group whose attributes carry
    ``nisbflow_version`` and ``nisbflow_output == kind`` (any output nisbflow wrote for ``kind=None``), or, for
    ``kind="seed"``, a folder holding only a seed that nisbflow wrote."""
    import zarr

    url = storage_url(path)
    candidates = [(url, kind)] + ([(f"{url}/data.zarr", "seed")] if kind == "seed" else [])
    for candidate, expected in candidates:
        try:
            node = zarr.open(candidate, mode="r")
        except Exception:
            continue
        attrs = node.attrs
        if "nisbflow_version" not in attrs or expected is not None and attrs.get("nisbflow_output") != expected:
            continue
        if candidate == url:
            return True
        fs, root = fsspec.core.url_to_fs(url)  # a seed folder: nothing there but what synth writes
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
        return names <= {"data.zarr", "skeleton.pkl", "skeleton.json", "skeleton.npz"}
    return False


def check_replaceable(output, kind: str | None, *, overwrite: bool, force: bool, where=None) -> bool:
    """Whether ``output`` exists; raise :class:`OutputExistsError` unless it may be replaced: ``overwrite`` for a
    ``kind`` output nisbflow wrote (any output of nisbflow's for ``kind=None``), ``force`` for anything else.
    ``where``: where the existing output lies now, when not at ``output`` (an interrupted publish keeps it in the
    staging folder)."""
    url = storage_url(where if where is not None else output)
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(root):
        return False
    if force:
        return True
    if not overwrite:
        raise OutputExistsError(f"output {output} already exists; pass --overwrite to replace it")
    if not written_by_nisbflow(url, kind):
        raise OutputExistsError(
            f"output {output} exists and is not {f'a {kind}' if kind else 'an'} output written by "
            "nisbflow (its "
            "attributes do not say so); --overwrite replaces only those, pass --force to "
            "replace it anyway"
        )
    return True
