"""Block markers and the evidence that makes them count: how a resumed pass knows which of its blocks are done.

A block finishes by writing a marker after its data (:func:`write_marker`: the run id, a newline, a payload). A
marker alone proves little: the data it vouches for may have been lost or replaced since. So each block-wise pass
states, as a :class:`BlockwisePass` (the way volara's ``BlockwiseTask`` lists what a task provides), which evidence
its markers need, and :func:`pending` keeps only the markers that evidence backs:

* :class:`CreatedByRun`: the output the pass writes carries this run's id (else every marker of the pass goes, and
  the output is created afresh);
* :class:`WholeChunks`: every chunk of the block in the arrays it wrote is there and decodes;
* :class:`ScratchFiles`: the block's scratch files, which a later pass reads, exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import fsspec
import numpy as np

from nisbflow.paths import join_protocol

if TYPE_CHECKING:
    from nisbflow.blocks import BlockGrid


def index_of(key: str) -> tuple[int, ...]:
    """A block index from its marker key ``"i.j.k"``."""
    return tuple(int(i) for i in key.split("."))


def remove_tree(fs, root: str, files=None) -> None:
    """Delete every key under ``root`` (and the folder itself where the store keeps folders)."""
    files = fs.find(root) if files is None else files
    if files:
        fs.rm(files)
    try:
        if fs.exists(root):
            fs.rm(root, recursive=True)
    except FileNotFoundError:
        pass


class Markers:
    """The block markers of one run: files ``{staging}/done/{pass}/{i.j.k}`` whose content starts with the run id.

    ``fs``, ``staging``: the filesystem and path of the run's staging folder; ``output``: the output's name for
    messages; ``log``: a ``print``-like function for what a resume keeps and drops."""

    def __init__(self, fs, staging: str, run_id: str, *, output: str, log: Callable[[str], None]):
        self.fs, self.staging, self.run_id, self.output, self.log = fs, staging, run_id, output, log

    def _folder(self, stage: str) -> str:
        return f"{self.staging}/done/{stage}"

    def url(self, stage: str, key: str) -> str:
        """URL of one block's marker for ``stage``; write it with :func:`write_marker` after the block's data."""
        return join_protocol(self.fs, f"{self._folder(stage)}/{key}")

    def finished(self, stage: str) -> dict[str, bytes]:
        """Markers of ``stage`` written by this run: ``{block key: payload}``."""
        folder = self._folder(stage)
        if not self.fs.exists(folder):
            return {}
        paths = self.fs.ls(folder, detail=False)
        contents = self.fs.cat(paths) if paths else {}
        prefix = self.run_id.encode() + b"\n"
        return {
            p.rstrip("/").rsplit("/", 1)[-1]: content[len(prefix) :]
            for p, content in contents.items()
            if content.startswith(prefix)
        }

    def forget(self, stage: str, keys=None) -> None:
        """Drop the markers of ``stage`` named by ``keys`` (every one of them when None): their evidence is gone."""
        if keys is None:
            if self.fs.exists(self._folder(stage)):
                remove_tree(self.fs, self._folder(stage))
            return
        for key in keys:
            marker = f"{self._folder(stage)}/{key}"
            if self.fs.exists(marker):
                self.fs.rm(marker)

    def owns(self, url: str) -> bool:
        """Whether the zarr array or group at ``url`` was created by this run (its ``nisbflow_run`` attribute)."""
        import zarr

        try:
            return zarr.open(url, mode="r").attrs.get("nisbflow_run") == self.run_id
        except Exception:
            return False


class Evidence(Protocol):
    """What a marker needs besides itself to count: :meth:`keep` returns the markers of ``finished`` it backs
    (``{block key: payload}``), dropping the others from ``markers`` and saying so through its ``log``."""

    def keep(self, markers: Markers, stage: str, finished: dict[str, bytes], grid: BlockGrid) -> dict[str, bytes]: ...


@dataclass(frozen=True)
class CreatedByRun:
    """Markers vouch only for an output this run created: unless the zarr array or group at ``url`` carries this
    run's id, every marker of the pass is dropped and ``create()`` (when given) makes the output afresh."""

    url: str
    create: Callable[[], object] | None = None

    def keep(self, markers: Markers, stage: str, finished: dict[str, bytes], grid: BlockGrid) -> dict[str, bytes]:
        if markers.owns(self.url):
            return finished
        if finished:
            markers.log(
                f"{len(finished)} block markers in {join_protocol(markers.fs, markers.staging)} have no "
                "array of this run behind them; recomputing every block"
            )
        markers.forget(stage)
        if self.create is not None:
            self.create()
        return {}


@dataclass(frozen=True)
class WholeChunks:
    """A marker counts only if its block's chunks in each zarr array of ``arrays`` are all there and whole
    (:func:`nisbflow.data.chunks.damaged_chunks`). ``region(index)``: the block's region of those arrays (default
    its write region). A block whose data was lost or damaged after its marker loses the marker."""

    arrays: tuple[str, ...]
    region: Callable | None = None

    def keep(self, markers: Markers, stage: str, finished: dict[str, bytes], grid: BlockGrid) -> dict[str, bytes]:
        from nisbflow.data.chunks import damaged_chunks

        region = self.region or grid.write_region
        for array in self.arrays:
            if not finished:
                break
            damaged = damaged_chunks(array, {key: region(index_of(key)) for key in finished})
            if damaged:
                key, reason = next(iter(sorted(damaged.items())))
                markers.log(
                    f"{len(damaged)} finished block(s) of {markers.output} lost or damaged their data since "
                    f"(block {key}: {reason}); computing them again"
                )
                markers.forget(stage, damaged)
                finished = {key: payload for key, payload in finished.items() if key not in damaged}
        return finished


@dataclass(frozen=True)
class ScratchFiles:
    """A marker counts only if its block's scratch files exist: ``blocks_present()`` gives the linear ids of the
    blocks whose files do (called only when there are markers)."""

    blocks_present: Callable[[], set[int]]

    def keep(self, markers: Markers, stage: str, finished: dict[str, bytes], grid: BlockGrid) -> dict[str, bytes]:
        if not finished:
            return finished
        present = self.blocks_present()
        kept = {key: payload for key, payload in finished.items() if grid.linear(index_of(key)) in present}
        if len(kept) < len(finished):
            markers.log(
                f"{len(finished) - len(kept)} {stage} markers without their scratch files; computing those blocks again"
            )
        return kept


@dataclass(frozen=True)
class BlockwisePass:
    """One block-wise pass of a stage, as :meth:`StagedRun.pending <nisbflow.staging.run.StagedRun.pending>` needs
    it: ``name`` (its marker folder), the ``grid`` of blocks (:class:`~nisbflow.blocks.BlockGrid`), the
    ``evidence`` its markers need, checked in order, and ``what`` a resume says it keeps."""

    name: str
    grid: BlockGrid
    evidence: tuple[Evidence, ...] = ()
    what: str = "blocks already done"

    @classmethod
    def into_array(
        cls,
        name: str,
        grid: BlockGrid,
        array: str,
        *,
        create: Callable[[], object],
        arrays: tuple[str, ...] | None = None,
        region: Callable | None = None,
        what: str = "blocks already done",
    ) -> BlockwisePass:
        """A pass that writes its blocks into an output this run creates (``array``, a zarr array or group, made by
        ``create``) and whose chunks in ``arrays`` (default ``(array,)``) must be whole."""
        return cls(name, grid, (CreatedByRun(array, create), WholeChunks(arrays or (array,), region)), what)


@dataclass(frozen=True)
class BlockPass:
    """What :func:`pending` found for one pass: ``done`` maps each finished block index ``(i, j, k)`` to its
    marker's payload; ``pending`` lists the block indices still to compute, in C order."""

    stage: str
    done: dict = field(default_factory=dict)
    pending: list = field(default_factory=list)


def pending(markers: Markers, work: BlockwisePass) -> BlockPass:
    """Which blocks of ``work`` still have to be computed, and the marker payloads of those that finished before an
    interruption and whose evidence is there. Says through the markers' ``log`` how many blocks a resume keeps."""
    finished = markers.finished(work.name)
    for evidence in work.evidence:
        finished = evidence.keep(markers, work.name, finished, work.grid)
    if finished:
        markers.log(f"resuming {markers.output}: {len(finished)} of {work.grid.n_blocks} {work.what}")
    done = {index_of(key): payload for key, payload in finished.items()}
    indices = [tuple(int(i) for i in index) for index in work.grid.indices()]
    return BlockPass(work.name, done, [index for index in indices if index not in done])


def write_marker(url: str, run_id: str, payload: bytes = b"") -> None:
    """Record a finished block (call after its data is written): the run id, a newline, then ``payload``."""
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, run_id.encode() + b"\n" + payload)


def store_block(values: np.ndarray, target: str, region, marker: str, run_id: str, payload: bytes = b"") -> None:
    """Task body: write one block's values into the zarr array ``target`` at ``region`` (slices), then its marker."""
    from nisbflow.data.chunks import open_for_writing

    open_for_writing(target)[tuple(region)] = values
    write_marker(marker, run_id, payload)
