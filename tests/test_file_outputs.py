"""Single-file outputs (``evaluate --json/--plot``, ``model init/export/import``, ``skeletonize``, ``skeleton
convert``, ``convert`` to HDF5/TIFF): never an input (by path, symlink or hard link), never a file nisbflow did not
write unless ``--force``, never a training checkpoint replaced by a weights-only copy unless ``--force``; refused in
one line with exit code 2 and the file left byte for byte as it was. What nisbflow writes carries its mark, so that
``--overwrite`` of its own files works."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nisbflow.file_outputs import CHECKPOINT, METRICS, PLOT, SKELETON, VOLUME, checkpoint_state, written_kind
from nisbflow_cli.main import app

runner = CliRunner()


def digest(path: Path) -> str:
    """The bytes of a file, or of every file under a folder (sorted by name)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


@pytest.fixture
def lab(tmp_path, synthetic_seed):
    """A copy of the synthetic seed, a tiny checkpoint, a training checkpoint and a foreign text file."""
    from nisbflow.model import ARCHITECTURES, build, checkpoint_payload, save_random_checkpoint, write_checkpoint

    root, _ = synthetic_seed
    shutil.copytree(root, tmp_path / "seed")
    save_random_checkpoint(tmp_path / "weights.pt", ARCHITECTURES["tiny"])
    model = build(ARCHITECTURES["tiny"])
    optimizer = torch.optim.AdamW(model.parameters())
    write_checkpoint(tmp_path / "last.pt", checkpoint_payload(model, ARCHITECTURES["tiny"], {"step": 1},
                                                              optimizer=optimizer.state_dict(),
                                                              rng={"cpu": torch.get_rng_state()}))
    (tmp_path / "notes.txt").write_text("my notes\n")
    os.link(tmp_path / "seed" / "skeleton.pkl", tmp_path / "hardlink.json")
    os.symlink(tmp_path / "seed" / "skeleton.pkl", tmp_path / "symlink.json")
    return tmp_path


def invoke(lab: Path, arguments: list[str]):
    cwd = os.getcwd()
    os.chdir(lab)
    try:
        return runner.invoke(app, arguments)
    finally:
        os.chdir(cwd)


SEG, SKEL = "seed/data.zarr/seg", "seed/skeleton.pkl"
REFUSED = [
    # the command's own input, by name, inside an array, through a hard link and a symlink
    (["evaluate", SEG, "-s", SKEL, "--json", SKEL], SKEL, "would destroy an input"),
    (["evaluate", SEG, "-s", SKEL, "--json", f"{SEG}/0/.zarray"], "seed/data.zarr", "lies inside the segmentation"),
    (["evaluate", SEG, "-s", SKEL, "--json", "hardlink.json", "--force"], SKEL, "the same file under another name"),
    (["evaluate", SEG, "-s", SKEL, "--json", "symlink.json", "--force"], SKEL, "would destroy an input"),
    (["evaluate", SEG, "-s", SKEL, "--plot", SKEL], SKEL, "name a .png file"),
    (["evaluate", SEG, "-s", SKEL, "--json", "notes.txt"], "notes.txt", "not a file nisbflow wrote"),
    (["evaluate", SEG, "-s", SKEL, "--json", "m.json", "--plot", "m.json"], SEG, "name a .png file"),
    (["model", "export", "last.pt", "last.pt", "--overwrite", "--force"], "last.pt", "the input itself"),
    (["model", "export", "weights.pt", "last.pt", "--overwrite"], "last.pt", "a training checkpoint"),
    (["model", "init", "last.pt", "--arch", "tiny", "--overwrite"], "last.pt", "a training checkpoint"),
    (["model", "init", "notes.txt", "--arch", "tiny", "--overwrite"], "notes.txt", "not a file nisbflow wrote"),
    (["model", "init", SKEL, "--arch", "tiny", "--overwrite"], SKEL, "nisbflow's skeleton file"),
    (["model", "export", "weights.pt", "notes.txt", "--overwrite"], "notes.txt", "not a file nisbflow wrote"),
    (["skeletonize", SEG, "notes.txt", "--overwrite"], "notes.txt", "unknown skeleton format"),
    (["evaluate", SEG, "-s", SKEL, "--json", "m.png", "--plot", "m.png"], SEG, "is the --json m.png"),
    (["skeleton", "convert", SKEL, "notes.txt"], "notes.txt", "unknown skeleton format"),
]


@pytest.mark.parametrize("arguments, kept, message", [r for r in REFUSED if r[2]],
                         ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_single_file_outputs_are_refused_in_one_line_and_left_whole(lab, arguments, kept, message):
    before = digest(lab / kept)
    result = invoke(lab, arguments)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in result.output, result.output
    assert digest(lab / kept) == before
    assert not (lab / "m.json").exists()


def test_skeleton_convert_refuses_an_existing_output_without_overwrite(lab):
    (lab / "s.json").write_text("{}")
    refused = invoke(lab, ["skeleton", "convert", SKEL, "s.json"])
    assert refused.exit_code == 2 and "pass --overwrite" in refused.output
    assert (lab / "s.json").read_text() == "{}"
    foreign = invoke(lab, ["skeleton", "convert", SKEL, "s.json", "--overwrite"])
    assert foreign.exit_code == 2 and "pass --force" in foreign.output
    assert invoke(lab, ["skeleton", "convert", SKEL, "s.json", "--force"]).exit_code == 0
    assert written_kind(lab / "s.json") == SKELETON
    assert invoke(lab, ["skeleton", "convert", SKEL, "s.json", "--overwrite"]).exit_code == 0


def test_what_nisbflow_writes_carries_its_mark_and_is_replaced_by_overwrite(lab):
    from nisbflow.data.skeleton import load_skeleton

    assert invoke(lab, ["evaluate", SEG, "-s", SKEL, "--json", "m.json", "--plot", "m.png"]).exit_code == 0
    assert (written_kind(lab / "m.json"), written_kind(lab / "m.png")) == (METRICS, PLOT)
    again = invoke(lab, ["evaluate", SEG, "-s", SKEL, "--json", "m.json", "--plot", "m.png"])
    assert again.exit_code == 0, again.output  # a re-run rewrites its own report
    for name in ("s.pkl", "s.json", "s.npz"):
        assert invoke(lab, ["skeleton", "convert", SKEL, name]).exit_code == 0
        assert written_kind(lab / name) == SKELETON
        a, b = load_skeleton(lab / SKEL), load_skeleton(lab / name)
        assert sorted(a.nodes) == sorted(b.nodes) and a.number_of_edges() == b.number_of_edges()
    for name in ("v.h5", "v.tif"):
        assert invoke(lab, ["convert", SEG, name]).exit_code == 0
        assert written_kind(lab / name) == VOLUME
        assert invoke(lab, ["convert", SEG, name, "--overwrite"]).exit_code == 0
        back = invoke(lab, ["convert", name, f"{name}.zarr"])
        assert back.exit_code == 0, back.output
        import zarr

        from nisbflow.data.volumes import array_url

        assert np.array_equal(zarr.open_array(array_url(str(lab / f"{name}.zarr")))[...],
                              zarr.open_array(array_url(str(lab / SEG)))[...])
    assert written_kind(lab / "weights.pt") == CHECKPOINT
    assert (checkpoint_state(lab / "weights.pt"), checkpoint_state(lab / "last.pt")) == ("weights", "training")
    assert checkpoint_state(lab / "notes.txt") is None and written_kind(lab / "notes.txt") is None
    assert invoke(lab, ["model", "init", "weights.pt", "--arch", "tiny", "--overwrite", "--seed", "3"]).exit_code == 0
    exported = invoke(lab, ["model", "export", "last.pt", "export.pt", "--config-yaml", "c.yaml"])
    assert exported.exit_code == 2 and "records no training configuration" in exported.output
    assert invoke(lab, ["model", "export", "last.pt", "export.pt"]).exit_code == 0
    assert invoke(lab, ["model", "export", "last.pt", "export.pt", "--overwrite"]).exit_code == 0
    # --force replaces a training checkpoint by a weights-only one, as asked
    forced = invoke(lab, ["model", "export", "weights.pt", "last.pt", "--force"])
    assert forced.exit_code == 0, forced.output
    assert checkpoint_state(lab / "last.pt") == "weights"


def test_a_full_disk_names_the_file_and_leaves_no_partial_file(lab, monkeypatch):
    import errno

    import matplotlib.figure

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    result = invoke(lab, ["evaluate", SEG, "-s", SKEL, "--plot", "runs.png"])
    assert result.exit_code == 2
    assert "error: " in result.output and "runs.png" in result.output and "No space left" in result.output
    assert sorted(p.name for p in lab.iterdir() if "runs" in p.name) == []
