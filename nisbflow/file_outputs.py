"""Single-file outputs: the one guard every command passes before it writes a file, and how nisbflow marks the files
it writes so that a later ``--overwrite`` can tell them from anything else.

The files: a metrics JSON (``evaluate --json``), a run-length plot (``evaluate --plot``), a checkpoint (``model
init/export/import``), a skeleton (``skeletonize``, ``skeleton convert``), a converted HDF5 or TIFF volume
(``convert``), a configuration YAML (``model export --config-yaml``) and ``best.yaml`` (``tune``). Volumes written
block by block go through :class:`nisbflow.staging.StagedRun`, which keeps the same rules for zarr outputs.

:func:`check_file_output` refuses, in one line naming the file:

* an output that is one of the command's inputs, or lies inside one, or contains one
  (:func:`nisbflow.staging.check_not_input`: by resolved path, through symlinks, and by inode, so a hard link
  counts), whatever the flags;
* an existing file without ``overwrite`` (commands that rewrite their own report, ``evaluate --json``, pass
  ``overwrite=True``);
* an existing file that nisbflow did not write as this ``kind`` (:func:`written_kind` reads the mark each format
  carries), unless ``force``;
* a training checkpoint (optimizer, scaler and RNG state) about to be replaced by a weights-only copy, unless
  ``force``.

Files are then written whole through :func:`nisbflow.staging.staged_output`: a failure leaves the old file.

The marks are :mod:`nisbflow.provenance`'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nisbflow.errors import OutputExistsError
from nisbflow.provenance import CHECKPOINT, MARK, METRICS, PLOT, SKELETON, VOLUME, YAML  # noqa: F401 (re-exported)

_LEGACY_METRICS_KEYS = {"nerl", "erl", "max_erl", "per_skeleton_erl", "skeleton_length", "error_type"}
"""Keys every metrics JSON of nisbflow has carried (before :data:`MARK` was added), all of them together."""


def written_kind(path) -> str | None:
    """The kind of nisbflow output the file ``path`` records (:data:`MARK`), or None: not written by nisbflow, not
    readable, or a format without a mark. PNG, HDF5, TIFF and YAML files are read only as far as their mark; JSON,
    skeletons and checkpoints are loaded (pickles through the restricted unpickler, checkpoints with ``weights_only``
    and memory-mapped)."""
    path = str(path)
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".json":
            with open(path, "rb") as handle:
                data = json.loads(handle.read())
            if not isinstance(data, dict):
                return None
            if isinstance(data.get(MARK), str):
                return data[MARK]
            if isinstance(data.get("graph"), dict) and isinstance(data["graph"].get(MARK), str):
                return data["graph"][MARK]  # a node-link skeleton
            return METRICS if _LEGACY_METRICS_KEYS <= set(data) else None
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                return (getattr(image, "text", None) or {}).get(MARK)
        if suffix in (".pkl", ".pickle"):
            from nisbflow.data.skeleton import load_skeleton

            return load_skeleton(path).graph.get(MARK)
        if suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as arrays:
                return str(arrays[MARK]) if MARK in arrays.files else None
        if suffix in (".h5", ".hdf5", ".hdf"):
            import h5py

            with h5py.File(path, "r") as handle:
                value = handle.attrs.get(MARK)
            return value.decode() if isinstance(value, bytes) else (str(value) if value is not None else None)
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                description = str(getattr(tiff.pages[0], "description", "")) if len(tiff.pages) else ""
            recorded = json.loads(description) if description.startswith("{") else {}
            return recorded.get(MARK) if isinstance(recorded, dict) else None
        if suffix in (".yaml", ".yml"):
            with open(path, "rb") as handle:
                first = handle.readline()
            return YAML if first.startswith(b"# nisbflow") else None
        if suffix in (".pt", ".pth", ".ckpt"):
            return CHECKPOINT if checkpoint_state(path) is not None else None
    except Exception:
        return None
    return None


def checkpoint_state(path) -> str | None:
    """For a nisbflow checkpoint file: ``"training"`` when it holds training state (optimizer, scheduler, scaler or
    RNG state, which resuming needs), ``"weights"`` when it holds weights only; None for any other file."""
    from nisbflow.model.reader import CHECKPOINT_FORMAT, peek_payload

    payload = peek_payload(path)
    if payload is None or payload.get("format") != CHECKPOINT_FORMAT:
        return None
    training = {"optimizer", "scheduler", "scaler", "rng", "rng_state", "step"}
    return "training" if training & set(payload) else "weights"


def check_file_output(
    output,
    kind: str,
    *,
    inputs: dict | None = None,
    overwrite: bool = False,
    force: bool = False,
    option: str | None = None,
    weights_only: bool = False,
) -> bool:
    """Refuse writing the single file ``output`` as a ``kind`` output (see the module docstring) before any work;
    returns whether it exists (and may be replaced). ``inputs``: the command's inputs ``{role: path}``;
    ``option``: how the command line names the output (``--json``), for the message; ``weights_only``: the new
    file is a weights-only checkpoint, so replacing a training checkpoint needs ``force``. Also checks that the
    file's folder exists and is writable."""
    from nisbflow.staging import check_not_input

    named = f"{option} {output}" if option else f"output {output}"
    check_not_input(output, inputs or {}, option)
    path = str(output)
    if "://" not in path:
        folder = Path(path).absolute().parent
        if not folder.is_dir():
            raise OutputExistsError(f"{named}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise OutputExistsError(f"{named}: folder {folder} is not writable")
        if os.path.isdir(path):
            raise OutputExistsError(f"{named} is a folder; name a file")
        exists = os.path.lexists(path)
    else:
        import fsspec

        fs, where = fsspec.core.url_to_fs(path)
        exists = fs.exists(where)
    if not exists:
        return False
    if not overwrite and not force:
        raise OutputExistsError(f"{named} already exists; pass --overwrite to replace it")
    if force:
        return True
    found = written_kind(path) if "://" not in path else None
    if found != kind:
        what = f"nisbflow's {found} file" if found else "not a file nisbflow wrote"
        raise OutputExistsError(
            f"{named} exists and is {what}; only a {kind} file nisbflow wrote is replaced "
            "without asking: pass --force to replace it anyway"
        )
    if kind == CHECKPOINT and weights_only and checkpoint_state(path) == "training":
        raise OutputExistsError(
            f"{named} is a training checkpoint (optimizer, scaler and RNG state, which resuming "
            "needs); a weights-only copy would replace it: choose another output, or pass "
            "--force to replace it anyway"
        )
    return True
