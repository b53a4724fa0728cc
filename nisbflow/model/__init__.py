"""The BANIS network (:mod:`.network`: MedNeXt as MIC-DKFZ defines it, on MONAI's) and checkpoints that carry their
own configuration (:mod:`.checkpoint`: the :class:`Checkpoint` handle, loading, saving, export and import;
:mod:`.reader`: one read of a file, its hash and its layout, the shipped models; BANIS's and PyTorch Connectomics'
checkpoints through :mod:`.peers`)."""

from .checkpoint import (
    Checkpoint,
    checkpoint_payload,
    export_checkpoint,
    import_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    save_random_checkpoint,
    write_checkpoint,
)
from .network import ARCHITECTURES, build
from .reader import CHECKPOINT_FORMAT, DEFAULT_SHIPPED, SHIPPED_DIR, SHIPPED_MODELS, CheckpointError

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointError",
    "DEFAULT_SHIPPED",
    "SHIPPED_DIR",
    "SHIPPED_MODELS",
    "build",
    "checkpoint_payload",
    "export_checkpoint",
    "import_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_random_checkpoint",
    "write_checkpoint",
]
