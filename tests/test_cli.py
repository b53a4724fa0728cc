import zarr
from typer.testing import CliRunner

from nisbflow_cli.main import app

runner = CliRunner()


def test_synth_writes_seed_preview_and_summary(tmp_path):
    out, png = tmp_path / "seed3", tmp_path / "preview.png"
    result = runner.invoke(app, ["synth", str(out), "--shape", "32,32,16", "--seed", "3", "--chunks", "16,16,16",
                                 "--preview", str(png)])
    assert result.exit_code == 0, result.output
    assert "skeleton nodes" in result.output and "path length" in result.output
    assert zarr.open_array(str(out / "data.zarr/img")).shape == (32, 32, 16, 1)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    again = runner.invoke(app, ["synth", str(out), "--shape", "32,32,16"])
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.output


def test_synth_rejects_bad_shape(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "x"), "--shape", "32,32"])
    assert result.exit_code != 0 and "--shape must be three positive numbers" in result.output
    assert not (tmp_path / "x").exists()


def test_skeleton_convert(tmp_path, synthetic_seed):
    root, summary = synthetic_seed
    result = runner.invoke(app, ["skeleton", "convert", str(root / "skeleton.pkl"), str(tmp_path / "s.npz")])
    assert result.exit_code == 0, result.output
    assert f"{summary.n_skeleton_nodes} nodes" in result.output
    bad = runner.invoke(app, ["skeleton", "convert", str(root / "skeleton.pkl"), str(tmp_path / "s.swc")])
    assert bad.exit_code == 2 and "unknown skeleton format" in bad.output
