import subprocess
import sys

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


def _commands(group, prefix=()):
    """Every command path of a click group, e.g. ('decode',), ('model', 'init')."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, prefix + (name,))
        else:
            yield prefix + (name,)


def test_version_short_help_and_readable_types():
    import typer

    from nisbflow import __version__

    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"nisbflow {__version__}"
    paths = list(_commands(typer.main.get_command(app)))
    assert ("decode",) in paths and ("model", "init") in paths and len(paths) == 20  # as the architecture test counts
    for path in [(), *paths]:
        short = runner.invoke(app, [*path, "-h"], terminal_width=200)
        assert short.exit_code == 0, (path, short.output)
        assert short.output == runner.invoke(app, [*path, "--help"], terminal_width=200).output
        assert "<bool>" not in short.output and "<str>" not in short.output and "<list" not in short.output, path
    decode = runner.invoke(app, ["decode", "-h"], terminal_width=200).output
    # -t repeats and takes comma-separated lists: its metavar says both
    assert "FLOAT[,FLOAT...]" in decode and "--config-file" in decode and "INTEGER" in decode


def test_config_file_is_an_alias_of_config(tmp_path):
    (tmp_path / "c.yaml").write_text("decoding:\n  threshold: 0.42\n")
    runner = CliRunner()
    long = runner.invoke(app, ["config", "show", "--config-file", str(tmp_path / "c.yaml")])
    short = runner.invoke(app, ["config", "show", "-c", str(tmp_path / "c.yaml")])
    assert long.exit_code == 0 and long.output == short.output and "threshold: 0.42" in long.output


def test_messages_keep_the_extra_in_brackets(tmp_path):
    import importlib.util

    import numpy as np

    if importlib.util.find_spec("cupy") is not None:  # a GPU machine: the extra is installed
        return
    zarr.create_array(str(tmp_path / "aff.zarr"), shape=(3, 8, 8, 8), chunks=(3, 8, 8, 8),
                      dtype="float32")[...] = np.full((3, 8, 8, 8), 0.9, dtype=np.float32)
    result = CliRunner().invoke(app, ["decode", str(tmp_path / "aff.zarr"), str(tmp_path / "seg.zarr"),
                                      "--backend", "cupy"])
    assert result.exit_code == 2
    assert "pip install 'nisbflow[gpu]'" in " ".join(result.output.split())


def test_dask_cuda_without_a_gpu_is_one_line_before_any_cluster(tmp_path):
    """Where no GPU is visible (asked of NVML, as dask-cuda asks it), ``--cluster dask-cuda`` ends in one line, not
    dask-cuda's NVML traceback, and nothing is written."""
    import numpy as np

    from nisbflow.cluster import visible_gpus

    if visible_gpus()[0] > 0:  # a GPU machine
        return
    zarr.create_array(str(tmp_path / "aff.zarr"), shape=(3, 8, 8, 8), chunks=(3, 8, 8, 8),
                      dtype="float32")[...] = np.full((3, 8, 8, 8), 0.9, dtype=np.float32)
    zarr.create_array(str(tmp_path / "img.zarr"), shape=(64, 64, 64), chunks=(64, 64, 64),
                      dtype="uint8")[...] = np.full((64, 64, 64), 128, dtype=np.uint8)
    for command in (["decode", str(tmp_path / "aff.zarr"), str(tmp_path / "seg.zarr")],
                    ["infer", str(tmp_path / "img.zarr"), str(tmp_path / "out.zarr"), "--checkpoint",
                     "nisb-tiny-synthetic"]):
        result = subprocess.run([sys.executable, "-m", "nisbflow_cli.main", *command, "--cluster", "dask-cuda"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: --cluster dask-cuda: no NVIDIA GPU is visible on this machine (NVML: ")
        assert "--cluster local" in line
    assert not (tmp_path / "seg.zarr").exists() and not (tmp_path / "out.zarr").exists()


