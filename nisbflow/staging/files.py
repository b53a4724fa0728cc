"""Single files (a skeleton, a checkpoint, ``best.yaml``, ``metrics.json``) replaced whole: written under a
temporary sibling name and moved into place only when complete."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec

from nisbflow.errors import OutputExistsError
from nisbflow.paths import protocol_of


def _remove_path(fs, path: str) -> None:
    if fs.exists(path):
        fs.rm(path, recursive=True)


@contextlib.contextmanager
def staged_output(path: str | Path, *, overwrite: bool = False) -> Iterator[str]:
    """Write an output under a temporary sibling name and move it to ``path`` only when complete (a single file on a
    local disk by an atomic rename).

    Yields the temporary path. An exception inside the block removes the temporary output and leaves any
    existing ``path`` untouched; an existing ``path`` is refused unless ``overwrite`` is true.
    """
    path = str(path).rstrip("/")
    fs, final = fsspec.core.url_to_fs(path)
    if fs.exists(final) and not overwrite:
        raise OutputExistsError(f"output {path} already exists; pass --overwrite to replace it")
    parent, name = final.rsplit("/", 1) if "/" in final else (".", final)
    token = uuid.uuid4().hex[:8]
    stem, dot, suffix = name.rpartition(".")
    stem, suffix = (stem, dot + suffix) if stem else (name, "")
    temporary = f"{parent}/.{stem}.partial-{token}{suffix}"  # keeps the suffix, which names the format
    fs.makedirs(parent, exist_ok=True)
    protocol = path[: -len(final)] if path.endswith(final) and path != final else ""
    try:
        yield protocol + temporary
    except BaseException as error:
        with contextlib.suppress(OSError):
            _remove_path(fs, temporary)  # no 0-byte or half-written leftover
        if isinstance(error, OSError) and not error.filename:  # a full disk's error names the output
            raise OSError(error.errno, error.strerror or str(error), path) from None
        raise
    if protocol_of(fs) in ("file", "local") and os.path.isfile(temporary) and not os.path.isdir(final):
        os.replace(temporary, final)  # one file on a local disk: atomic, the old one is there until the new one is
        return
    retired = f"{parent}/.{name}.replaced-{token}"
    if fs.exists(final):
        fs.mv(final, retired, recursive=True)
    fs.mv(temporary, final, recursive=True)
    _remove_path(fs, retired)


def write_file(path: str | Path, content: bytes | str) -> None:
    """Replace the file ``path`` with ``content`` whole (through :func:`staged_output`): a reader never sees half of
    it, and a failed write leaves the old file."""
    with staged_output(path, overwrite=True) as temporary:
        fs, where = fsspec.core.url_to_fs(temporary)
        fs.pipe_file(where, content.encode() if isinstance(content, str) else content)
