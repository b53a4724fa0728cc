"""Score decoding thresholds on cached affinities: decode block-wise, evaluate against the skeletons, forget the
segmentation.

One :class:`ThresholdScorer` holds the validation seed's affinities (a ``(C, X, Y, Z) float16`` zarr array, inferred
once) and its skeleton. :meth:`ThresholdScorer.score_many` decodes several thresholds from one read of the
affinities; scores are cached per threshold (rounded to 6 decimals), so a sampler that proposes a threshold again
costs nothing.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from nisbflow.data.volumes import open_segmentation
from nisbflow.evaluate import NerlResult


def threshold_key(threshold: float) -> float:
    """A threshold as a cache key: Optuna's stepped floats (0.6000000000000001) and grid values agree."""
    return round(float(threshold), 6)


def threshold_grid(low: float, high: float, step: float) -> list[float]:
    """``low, low + step, …, ≤ high`` as rounded floats (the search space of ``tune.threshold``)."""
    count = int(round((high - low) / step + 1e-9)) + 1
    return [threshold_key(low + i * step) for i in range(count) if low + i * step <= high + 1e-9]


class ThresholdScorer:
    """NERL (and every other skeleton metric) of ``decode_affinity_cc(affinities, threshold)`` (or, with
    ``method="waterz"``, of the agglomeration at ``threshold`` with ``waterz``'s
    :class:`~nisbflow.decode.agglomerate_blockwise.WaterzOptions`) for any threshold.

    ``affinities``: zarr array path ``(C≥3, X, Y, Z)`` float16/float32. ``skeleton``: NISB ``skeleton.pkl``.
    ``voxel_size``: nm, X, Y, Z. Decoding runs on the current Dask client (or the local scheduler); segmentations
    go to a scratch folder (``scratch``, default a temporary one) and are deleted once scored; a scratch folder this
    scorer created is removed again when it is empty.
    """

    def __init__(
        self,
        affinities: str | Path,
        skeleton: str | Path,
        *,
        voxel_size=(9, 9, 20),
        merge_threshold=1,
        mask=None,
        backend: str = "numba",
        scratch: str | Path | None = None,
        progress: bool = False,
        method: str = "cc",
        waterz=None,
        metrics=("nerl",),
        em_erl_merge_threshold: int = 50,
    ):
        self.affinities, self.skeleton = str(affinities), str(skeleton)
        self.voxel_size, self.merge_threshold = tuple(voxel_size), merge_threshold
        self.mask, self.backend, self.progress = mask, backend, progress
        self.method, self.waterz = method, waterz
        self.metrics, self.em_erl_merge_threshold = tuple(metrics), int(em_erl_merge_threshold)
        self.scratch = Path(scratch) if scratch else None
        self.results: dict[float, NerlResult] = {}
        self.segments: dict[float, int] = {}

    def score(self, threshold: float) -> NerlResult:
        """The metrics at one threshold (decoded now unless already scored)."""
        return self.score_many([threshold])[threshold_key(threshold)]

    def score_many(self, thresholds) -> dict[float, NerlResult]:
        """Metrics for each threshold; the ones not yet scored are decoded together from one affinity read."""
        from nisbflow.decode import decode_to_zarr, threshold_array_name
        from nisbflow.evaluate import nerl

        keys = sorted({threshold_key(t) for t in thresholds})
        missing = [t for t in keys if t not in self.results]
        if missing:
            parent = self.scratch
            created = parent is not None and not parent.exists()
            if parent is not None:
                parent.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix="tune-", dir=parent))
            try:
                output = folder / "segmentation.zarr"
                decoded = decode_to_zarr(
                    self.affinities,
                    output,
                    thresholds=missing,
                    mask=self.mask,
                    backend=self.backend,
                    progress=self.progress,
                    method=self.method,
                    waterz=self.waterz,
                )
                for value in missing:
                    array = output if len(missing) == 1 else output / threshold_array_name(value)
                    self.results[value] = nerl(
                        open_segmentation(array),
                        self.skeleton,
                        voxel_size=self.voxel_size,
                        merge_threshold=self.merge_threshold,
                        metrics=self.metrics,
                        em_erl_merge_threshold=self.em_erl_merge_threshold,
                    )
                    self.segments[value] = int(decoded.counts[value])
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                if created and parent is not None:  # leave no empty scratch folder behind
                    with contextlib.suppress(OSError):
                        parent.rmdir()
        return {t: self.results[t] for t in keys}
