"""``--preview PNG``: slices of a synthetic (or any NISB) image beside its coloured segmentation."""

from __future__ import annotations

import numpy as np


def label_colours(segmentation: np.ndarray) -> np.ndarray:
    """RGB float colours ``(..., 3)`` for integer labels: a fixed pseudo-random colour per id, black for 0."""
    ids = segmentation.astype(np.uint64)
    rgb = np.stack([((ids * np.uint64(k)) % np.uint64(251)).astype(np.float64) / 251.0 for k in (97, 193, 59)], axis=-1)
    rgb = 0.25 + 0.75 * rgb
    rgb[segmentation == 0] = 0.0
    return rgb


def save_preview(image_xy, seg_xy, image_xz, seg_xz, path: str, title: str = "", voxel_size=(9.0, 9.0, 20.0)) -> None:
    """Draw an XY slice ``(X, Y)`` and an XZ slice ``(X, Z)`` of a ``uint8`` image beside its segmentation and an
    overlay, and save a PNG to ``path``. Rows are x; the XZ panel is drawn to scale with the voxel size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = [
        ("XY slice", image_xy, seg_xy, voxel_size[0] / voxel_size[1]),
        ("XZ slice", image_xz, seg_xz, voxel_size[0] / voxel_size[2]),
    ]
    figure, axes = plt.subplots(2, 3, figsize=(13, 9), squeeze=False)
    for row, (name, grey, labels, aspect) in enumerate(views):
        colours = label_colours(labels)
        overlay = 0.55 * np.repeat(grey[..., None] / 255.0, 3, axis=-1) + 0.45 * colours
        panels = (("image", grey), ("segmentation", colours), ("overlay", overlay))
        for col, (what, picture) in enumerate(panels):
            axes[row, col].imshow(
                picture, cmap="gray" if col == 0 else None, vmin=0, vmax=255, aspect=aspect, interpolation="nearest"
            )
            axes[row, col].set_title(f"{what} — {name}", fontsize=9)
            axes[row, col].set_axis_off()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    from nisbflow.evaluate.report import save_figure

    save_figure(figure, path, dpi=80)
    plt.close(figure)
