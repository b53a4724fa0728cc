"""How a file records that nisbflow wrote it, and as what (read back by :func:`nisbflow.file_outputs.written_kind`).

Every single-file output carries :data:`MARK` with its kind: a JSON object's key, a PNG text chunk, a skeleton
graph's attribute (pickle, node-link JSON) or an ``.npz`` member, an HDF5 file's root attribute, a TIFF's first-page
description (JSON); a YAML file starts with ``# nisbflow``; a checkpoint has its ``format`` header. Zarr outputs
record ``nisbflow_version`` and ``nisbflow_output`` in their attributes (:mod:`nisbflow.staging`).
"""

MARK = "nisbflow_output"
"""The key, attribute or text chunk under which a file records that nisbflow wrote it, and as what."""

METRICS, PLOT, CHECKPOINT, SKELETON, VOLUME, YAML = "metrics", "plot", "checkpoint", "skeleton", "volume", "yaml"
"""The kinds of single-file output."""
