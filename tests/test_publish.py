"""Publish that always resumes: a process killed (``os._exit``, as SIGKILL: no clean-up runs) after each step of
:meth:`nisbflow.staging.StagedRun.publish` and of the staging folder's removal, for decode and infer. The same
command run again ends with the uninterrupted run's output, array for array, redoing no block; a run with other
settings never loses the previous output: whatever it is interrupted at, the output is whole, the old one or the
killed run's, and its own run then replaces it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

from nisbflow.data.volumes import array_url
from nisbflow.synth import synthesize_seed
from nisbflow.synth.affinities import noisy_affinities, write_noisy_affinities

MODEL = "nisb-tiny-synthetic"
SHAPE = (96, 96, 48)
STEPS = ["moving", "retired", "moved", "published", "removed", "renamed"]
"""The seams of staging.publish.publish_step, in the order a publish passes them."""
KILLED_RESULT_IN_PLACE = {"moved", "published", "removed", "renamed"}
SAME_COMMAND_DEFAULT = {("decode", step) for step in STEPS} | {("infer", "retired")}
OTHER_SETTINGS_DEFAULT = {("decode", "retired"), ("decode", "moved"), ("infer", "moved")}
"""What the default suite runs (every step for decode's re-run, the two steps that move an output for the others;
infer has the same StagedRun under it and is four times slower); every case runs with ``make test-slow``."""


def cases(default: set):
    return [pytest.param(stage, step, marks=() if (stage, step) in default else pytest.mark.slow)
            for stage in CALLS for step in STEPS]
"""Steps after which the killed run's result is at the output (before them: still the old output)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    synthesize_seed(root / "seed", SHAPE, seed=5, chunks=(48, 48, 48), progress=False)
    segmentation = zarr.open_array(str(root / "seed" / "data.zarr" / "seg"))[...]
    values = noisy_affinities(segmentation, 0.15, 0)
    zarr.create_array(str(root / "aff.zarr"), shape=values.shape, chunks=(3, 16, 16, 16), dtype="float16",
                      attributes={"offsets": ["1-0-0", "0-1-0", "0-0-1"]})[...] = values
    return root


def read(path) -> np.ndarray:
    return zarr.open_array(array_url(str(path)), mode="r")[...]


CALLS = {
    # stage: (call with {data}, {out}, {setting}; the killed and re-run setting; another setting)
    "decode": ("from nisbflow.decode import decode_to_zarr\n"
               "decode_to_zarr('{data}/aff.zarr', '{out}', thresholds=({setting},), overwrite=True, progress=False,"
               " log=print)", 0.75, 0.5),
    "infer": ("from nisbflow.infer.blockwise import infer_to_zarr\n"
              "infer_to_zarr('{data}/seed/data.zarr/img', '{out}', '" + MODEL + "', block=({setting}, 48, 48),"
              " overwrite=True, progress=False, log=print)", 48, 32),
}


def call(stage: str, data: Path, out: Path, setting, kill_after: str | None = None) -> subprocess.CompletedProcess:
    """Run the stage's library entry in a new process; ``kill_after``: end it with ``os._exit(137)`` right after
    that publish step, as SIGKILL would (no finally, no lock release)."""
    code = "import os\nimport dask\ndask.config.set(scheduler='synchronous')\n"
    if kill_after:
        code += textwrap.dedent(f"""
            import nisbflow.staging.publish as staging
            def step(name):
                if name == {kill_after!r}:
                    os._exit(137)
            staging.publish_step = step
            """)
    code += CALLS[stage][0].format(data=data, out=out, setting=setting)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def old_output(stage: str, data: Path, out: Path) -> np.ndarray:
    """An output nisbflow wrote before, with other values than either run gives."""
    if stage == "decode":
        assert call(stage, data, out, 0.9).returncode == 0
    else:
        write_noisy_affinities(data / "seed/data.zarr/seg", out, noise=0.3, seed=9, progress=False, overwrite=True)
    return read(out)


@pytest.fixture(scope="module")
def references(data, tmp_path_factory):
    """Each stage's uninterrupted output at both settings."""
    folder = tmp_path_factory.mktemp("references")
    found = {}
    for stage, (_, setting, other) in CALLS.items():
        for value in (setting, other):
            out = folder / f"{stage}-{value}.zarr"
            result = call(stage, data, out, value)
            assert result.returncode == 0, result.stderr
            found[stage, value] = read(out)
    return found


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("stage, step", cases(SAME_COMMAND_DEFAULT))
def test_a_publish_killed_at_any_step_is_finished_by_the_same_command_without_redoing_blocks(
        stage, step, data, references, tmp_path):
    out = tmp_path / "out.zarr"
    old = old_output(stage, data, out)
    _, setting, _ = CALLS[stage]
    killed = call(stage, data, out, setting, kill_after=step)
    assert killed.returncode == 137, killed.stderr
    again = call(stage, data, out, setting)
    assert again.returncode == 0, again.stderr
    assert np.array_equal(read(out), references[stage, setting])
    assert not np.array_equal(read(out), old)
    assert leftovers(tmp_path) == []
    if step in ("moving", "retired", "moved", "published", "removed"):  # the staging folder was still there
        assert "blocks already" in again.stdout and "recover" in again.stdout or step == "moving", again.stdout
        done = [line for line in again.stdout.splitlines() if line.startswith("resuming")]
        assert done and all(line.split(": ")[1].split(" of ")[0] == line.split(" of ")[1].split()[0]
                            for line in done), again.stdout  # every block of every pass already done


@pytest.mark.parametrize("stage, step", cases(OTHER_SETTINGS_DEFAULT))
def test_a_run_with_other_settings_after_a_killed_publish_never_loses_the_output(stage, step, data, references,
                                                                                 tmp_path):
    out = tmp_path / "out.zarr"
    old = old_output(stage, data, out)
    _, setting, other = CALLS[stage]
    assert call(stage, data, out, setting, kill_after=step).returncode == 137
    # the other run is itself killed as it starts to publish: the output is whole, the old one or the killed run's
    assert call(stage, data, out, other, kill_after="moving").returncode == 137
    expected = references[stage, setting] if step in KILLED_RESULT_IN_PLACE else old
    assert np.array_equal(read(out), expected)
    finished = call(stage, data, out, other)
    assert finished.returncode == 0, finished.stderr
    assert np.array_equal(read(out), references[stage, other])
    assert leftovers(tmp_path) == []
