"""nisbflow tune: Optuna threshold search on cached validation affinities, study resume, parameters files."""

import pytest
import yaml
from typer.testing import CliRunner

from nisbflow.errors import ConfigError
from nisbflow.config import load_config
from nisbflow.settings import as_run_settings
from nisbflow_cli.main import app


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    from nisbflow.synth import synthesize_seed

    root = tmp_path_factory.mktemp("tune-data")
    for name, seed in (("val/seed100", 100), ("test/seed101", 101)):
        synthesize_seed(str(root / name), (96, 96, 64), seed=seed, chunks=(48, 48, 64), progress=False)
    return root


SHIPPED = "nisb-tiny-synthetic-3667c046"
"""The shipped model's tuning folder: its name and the first 8 hex digits of its sha256."""


def tuned(root, method: str = "cc"):
    """Where tune writes best.yaml, the curve and tune-test's test output for the shipped model."""
    return root / "tune" / SHIPPED / method


def tune_config(seeds, tmp_path, *more):
    return load_config("nisbflow/model/shipped/nisb_tiny_synthetic.yaml", [
        f"data.val.path={seeds / 'val' / 'seed100'}", f"data.val.skeleton={seeds / 'val' / 'seed100' / 'skeleton.pkl'}",
        f"data.test.path={seeds / 'test' / 'seed101'}",
        f"data.test.skeleton={seeds / 'test' / 'seed101' / 'skeleton.pkl'}", f"save_path={tmp_path}",
        "tune.study_name=test", *more])


def test_threshold_grid_and_keys():
    from nisbflow.tune import threshold_grid

    assert threshold_grid(0.4, 0.9, 0.1) == [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert threshold_grid(0.5, 0.5, 0.1) == [0.5]


def test_tpe_reaches_the_best_point_of_the_exhaustive_grid_and_the_study_resumes(seeds, tmp_path):
    import optuna
    from optuna.trial import TrialState

    from nisbflow.tune import ThresholdScorer, threshold_grid, tune

    config = tune_config(seeds, tmp_path, "tune.n_trials=8")
    result = tune(as_run_settings(config, "nisb-tiny-synthetic"), progress=False)
    grid = threshold_grid(0.4, 0.9, 0.1)
    exhaustive = ThresholdScorer(result.affinities, seeds / "val" / "seed100" / "skeleton.pkl").score_many(grid)
    best_of_grid = max(r.nerl for r in exhaustive.values())
    assert best_of_grid > 0.2  # the shipped model segments something at some threshold
    assert result.best_value == pytest.approx(best_of_grid)
    assert all(result.curve[t] == pytest.approx(exhaustive[t].nerl) for t in result.curve)
    params = yaml.safe_load(result.params_path.read_text())
    assert params.pop("_tuned_") == {"checkpoint": "nisb-tiny-synthetic", "checkpoint_sha256": "3667c0460e39fb58a5ab3d6177b562968a76e6b8d8a5f6f994e4296c46cbdc20",
                                     "method": "cc", "study": result.study_name, "storage": config.tune.storage,
                                     "validation": str(seeds / "val" / "seed100"),
                                     "identity": result.study_name.rsplit("-", 1)[1]}
    assert params == {"decoding": {"threshold": result.best_threshold}}
    assert result.study_name.startswith("test-") and len(result.study_name) == len("test-") + 12
    assert result.plot_path.stat().st_size > 0

    # an interrupted run leaves a RUNNING trial; the next run marks it failed and appends its own trials
    study = optuna.load_study(study_name=result.study_name, storage=config.tune.storage)
    study.ask()
    again = tune(as_run_settings(config, "nisb-tiny-synthetic"), progress=False)
    assert again.n_failed_marked == 1
    study = optuna.load_study(study_name=result.study_name, storage=config.tune.storage)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 16
    assert again.best_value == pytest.approx(best_of_grid)


def test_grid_sampler_scores_the_whole_grid_in_one_pass_and_test_uses_best_yaml(seeds, tmp_path):
    runner = CliRunner()
    overrides = [f"data.val.path={seeds / 'val' / 'seed100'}", f"data.test.path={seeds / 'test' / 'seed101'}",
                 f"save_path={tmp_path}", "tune.sampler=grid", "tune.threshold.low=0.5", "tune.threshold.high=0.8"]
    result = runner.invoke(app, ["tune", "--checkpoint", "nisb-tiny-synthetic", "--config",
                                 "nisbflow/model/shipped/nisb_tiny_synthetic.yaml", "--cluster", "sync", *overrides])
    assert result.exit_code == 0, result.output
    assert "best threshold" in result.output and "grid: scoring 4 thresholds" in result.output
    best = tuned(tmp_path) / "best.yaml"
    threshold = yaml.safe_load(best.read_text())["decoding"]["threshold"]
    again = runner.invoke(app, ["tune", "--checkpoint", "nisb-tiny-synthetic", "--config",
                                "nisbflow/model/shipped/nisb_tiny_synthetic.yaml", "--cluster", "sync", *overrides])
    assert again.exit_code == 0 and "already complete" in again.output
    tested = runner.invoke(app, ["test", "--checkpoint", "nisb-tiny-synthetic", "--config",
                                 "nisbflow/model/shipped/nisb_tiny_synthetic.yaml", "--params", str(best),
                                 "--cluster", "sync", *overrides])
    assert tested.exit_code == 0, tested.output
    assert f"threshold {threshold:g}" in tested.output


def test_params_files_and_bad_values(tmp_path):
    from nisbflow.errors import ConfigError
    from nisbflow.settings import resolve_settings

    path = tmp_path / "best.yaml"
    path.write_text("# comment\ndecoding: {threshold: 0.7}\ntune: {threshold: {low: 0.5}}\n")
    run = resolve_settings(params=path)
    assert (run.config.decoding.threshold, run.config.tune.threshold.low) == (0.7, 0.5)
    assert run.sources["decoding.threshold"] == f"--params {path}"
    with pytest.raises(ConfigError, match="not found: .*missing.yaml"):
        resolve_settings(params=tmp_path / "missing.yaml")
    path.write_text("decoding: {treshold: 0.7}\n")
    with pytest.raises(ConfigError, match="decoding.treshold"):
        resolve_settings(params=path)
    with pytest.raises(ConfigError, match="tune.threshold.low"):
        load_config(None, ["tune.threshold.low=0.9", "tune.threshold.high=0.5"])


def test_tune_test_applies_the_validation_threshold_to_the_test_seed(seeds, tmp_path):
    import json

    overrides = [f"data.val.path={seeds / 'val' / 'seed100'}", f"data.test.path={seeds / 'test' / 'seed101'}",
                 f"save_path={tmp_path}", "tune.sampler=grid", "tune.threshold.low=0.6", "tune.threshold.high=0.7"]
    result = CliRunner().invoke(app, ["tune-test", "--checkpoint", "nisb-tiny-synthetic", "--config",
                                      "nisbflow/model/shipped/nisb_tiny_synthetic.yaml", "--cluster", "sync",
                                      *overrides])
    assert result.exit_code == 0, result.output
    best = yaml.safe_load((tuned(tmp_path) / "best.yaml").read_text())["decoding"]["threshold"]
    metrics = json.loads((tuned(tmp_path) / "test" / "metrics.json").read_text())
    assert metrics["threshold"] == best and metrics["test_seed"].endswith("seed101")
    assert "tuned on" in " ".join(result.output.split())


def test_a_grid_after_tpe_scores_exactly_the_missing_grid_points_with_exact_values(seeds, tmp_path):
    import optuna
    from optuna.trial import TrialState

    from nisbflow.tune import threshold_grid, tune

    config = tune_config(seeds, tmp_path, "tune.n_trials=2", "tune.n_startup_trials=2", "tune.seed=3")
    first = tune(as_run_settings(config, "nisb-tiny-synthetic"), progress=False)
    tpe_points = set(first.curve)
    assert len(tpe_points) >= 1
    grid_config = tune_config(seeds, tmp_path, "tune.sampler=grid")
    lines = []
    result = tune(as_run_settings(grid_config, "nisb-tiny-synthetic"), progress=False, log=lines.append)
    grid = threshold_grid(0.4, 0.9, 0.1)
    missing = [t for t in grid if t not in tpe_points]
    assert f"grid: scoring {len(missing)} thresholds not yet in the study from one decoding pass" in lines
    assert result.study_name == first.study_name  # the same question: TPE's trials count for the grid
    study = optuna.load_study(study_name=result.study_name, storage=grid_config.tune.storage)
    completed = study.get_trials(states=(TrialState.COMPLETE,))
    added = [t.params["threshold"] for t in completed[len(completed) - len(missing):]]
    assert added == missing  # exactly the grid points not scored yet, as exact grid values
    assert all(repr(t) == repr(g) for t, g in zip(added, missing))  # 0.7, not 0.7000000000000001
    assert set(result.curve) == set(grid) | tpe_points
    assert not (tuned(tmp_path) / "scratch").exists()  # no empty scratch folder left behind


def test_the_study_name_follows_the_experiment_name(tmp_path):
    config = load_config(None, ["experiment_name=mouse_v2"])
    assert config.tune.study_name == "mouse_v2_cc_tuning"
    assert load_config(None, []).tune.study_name == "nisb_base_banis_cc_tuning"
    assert load_config(None, ["experiment_name=a", "tune.study_name=mine"]).tune.study_name == "mine"
    from nisbflow.config import config_to_yaml

    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(config))
    assert load_config(path, ["experiment_name=other"]).tune.study_name == "other_cc_tuning"


def test_tune_test_reads_the_checkpoint_once_on_the_client(seeds, tmp_path, monkeypatch):
    """One handle for the whole run: the client reads the file once; the (synchronous) worker loads the weights
    once more. Before the handle, tune-test read it up to six times."""
    import nisbflow.model.reader as reader_module
    from nisbflow.model.checkpoint import _cached_network
    from nisbflow.settings import resolve_settings
    from nisbflow.pipelines import tune_and_test

    _cached_network.cache_clear()
    reads = []
    original = reader_module.load_payload
    monkeypatch.setattr(reader_module, "load_payload", lambda path, *a: reads.append(str(path)) or original(path, *a))
    run = resolve_settings("nisb-tiny-synthetic", overrides=[
        f"data.val.path={seeds / 'val' / 'seed100'}", f"data.test.path={seeds / 'test' / 'seed101'}",
        f"save_path={tmp_path}", "tune.sampler=grid", "tune.threshold.low=0.7", "tune.threshold.high=0.7"])
    import dask

    with dask.config.set(scheduler="synchronous"):
        tune_and_test(run, progress=False, log=lambda *_: None)
    assert len(reads) == 2, reads  # the handle, then the worker's one load of the weights


def test_waterz_threshold_tuned_on_a_grid_then_tested_from_best_yaml(seeds, tmp_path):
    """decoding.method=waterz: the grid searches tune.waterz_threshold, each point's NERL equals the agglomeration
    of the cached affinities in memory (one block here) scored by nerl; best.yaml sets decoding.waterz.thresholds,
    and nisbflow test with it decodes the test seed by agglomeration at that threshold."""
    import json

    import zarr

    from nisbflow.data.volumes import array_url
    from nisbflow.decode.agglomerate import decode_affinity_waterz
    from nisbflow.evaluate import nerl

    runner = CliRunner()
    overrides = [f"data.val.path={seeds / 'val' / 'seed100'}", f"data.test.path={seeds / 'test' / 'seed101'}",
                 f"save_path={tmp_path}", "tune.sampler=grid", "decoding.method=waterz",
                 "tune.waterz_threshold.low=0.1", "tune.waterz_threshold.high=0.5", "tune.waterz_threshold.step=0.2",
                 "tune.study_name=waterz"]
    base = ["--checkpoint", "nisb-tiny-synthetic", "--config", "nisbflow/model/shipped/nisb_tiny_synthetic.yaml",
            "--cluster", "sync"]
    result = runner.invoke(app, ["tune", *base, *overrides])
    assert result.exit_code == 0, result.output
    assert "grid: scoring 3 thresholds" in result.output
    affinities = zarr.open_array(array_url(tmp_path / "tune" / SHIPPED / "val-affinities.zarr"))[...]
    expected = {t: nerl(s, seeds / "val" / "seed100" / "skeleton.pkl", voxel_size=(9, 9, 20)).nerl
                for t, s in zip((0.1, 0.3, 0.5), decode_affinity_waterz(affinities, (0.1, 0.3, 0.5)))}
    import optuna

    [name] = [n for n in optuna.get_all_study_names(f"sqlite:///{tmp_path}/tune.sqlite3") if n.startswith("waterz-")]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/tune.sqlite3")
    study_curve = {t.params["threshold"]: t.value for t in study.get_trials()}
    best = max(expected, key=expected.get)
    for threshold, value in expected.items():
        assert study_curve[threshold] == pytest.approx(value, abs=5e-5), (threshold, study_curve)
    params = yaml.safe_load((tuned(tmp_path, "waterz") / "best.yaml").read_text())
    assert params.pop("_tuned_")["method"] == "waterz"
    assert params == {"decoding": {"method": "waterz", "waterz": {"thresholds": [best]}}}
    tested = runner.invoke(app, ["test", *base, "--params", str(tuned(tmp_path, "waterz") / "best.yaml"),
                                 f"data.test.path={seeds / 'test' / 'seed101'}", f"save_path={tmp_path / 'test'}"])
    assert tested.exit_code == 0, tested.output
    assert f"waterz threshold {best:g}" in tested.output
    [folder] = [p for p in (tmp_path / "test").iterdir() if p.is_dir()]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["method"] == "waterz" and metrics["threshold"] == best
    [segmentation] = decode_affinity_waterz(zarr.open_array(array_url(folder / "affinities.zarr"))[...], [best])
    assert metrics["nerl"] == pytest.approx(nerl(segmentation, seeds / "test" / "seed101" / "skeleton.pkl",
                                                 voxel_size=(9, 9, 20)).nerl)


def test_two_checkpoints_and_both_methods_in_one_project_get_the_results_of_runs_alone(seeds, tmp_path):
    """One project folder, one study name (as every config inheriting one base once shared): the shipped model, a
    second checkpoint and the waterz method each get a study of their own whose curve equals a run alone; before,
    the second checkpoint reported the first one's NERLs and waterz took the cc trials' scores."""
    from nisbflow.model import Checkpoint, save_random_checkpoint
    from nisbflow.tune import tune

    other = tmp_path / "other.pt"
    save_random_checkpoint(other, Checkpoint.open("nisb-tiny-synthetic").model, seed=1)
    grid = ["tune.sampler=grid", "tune.threshold.low=0.5", "tune.threshold.high=0.7"]
    waterz = ["decoding.method=waterz", "tune.waterz_threshold.low=0.1", "tune.waterz_threshold.high=0.3",
              "tune.waterz_threshold.step=0.2"]

    def run(folder, checkpoint, *more):
        return tune(as_run_settings(tune_config(seeds, tmp_path / folder, *grid, *more), checkpoint),
                    progress=False, log=lambda *_: None)

    shipped = run("project", "nisb-tiny-synthetic")
    second = run("project", str(other))
    agglomerated = run("project", "nisb-tiny-synthetic", *waterz)
    assert len({shipped.study_name, second.study_name, agglomerated.study_name}) == 3
    assert all(r.study_name.startswith("test-") for r in (shipped, second, agglomerated))
    assert second.curve == run("alone-second", str(other)).curve
    assert agglomerated.curve == run("alone-waterz", "nisb-tiny-synthetic", *waterz).curve
    assert set(agglomerated.curve) == {0.1, 0.3} and set(second.curve) == {0.5, 0.6, 0.7}
    assert second.curve != shipped.curve  # another model scores otherwise
    again = run("project", "nisb-tiny-synthetic")  # the shipped model's study is found again, complete
    assert again.study_name == shipped.study_name and again.curve == shipped.curve

    # best.yaml names what it was tuned for: test refuses it for another checkpoint or method
    runner = CliRunner()
    data = [f"data.test.path={seeds / 'test' / 'seed101'}", f"save_path={tmp_path / 'tested'}"]
    refused = runner.invoke(app, ["test", "--checkpoint", str(other), "--params", str(shipped.params_path),
                                  "--cluster", "sync", *data])
    assert refused.exit_code == 2
    assert f"was tuned for checkpoint nisb-tiny-synthetic (sha256 {Checkpoint.open('nisb-tiny-synthetic').sha256})" \
        in " ".join(refused.output.split())
    refused = runner.invoke(app, ["test", "--checkpoint", "nisb-tiny-synthetic", "--params",
                                  str(shipped.params_path), "decoding.method=waterz", "--cluster", "sync", *data])
    assert refused.exit_code == 2 and "tuned for decoding.method cc" in " ".join(refused.output.split())
    assert not (tmp_path / "tested").exists()


def test_a_second_tuner_on_a_study_is_refused_and_the_first_finishes(seeds, tmp_path):
    """Two nisbflow tune on one study: the second once marked the first's running trial FAIL, and the first died
    with 'Cannot tell a FAIL trial' and lost best.yaml. Now one tuner per study: the second is refused in one
    line naming the first, which finishes with all its trials."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    import optuna

    nisbflow = str(Path(sys.executable).with_name("nisbflow"))
    arguments = [nisbflow, "tune", "--checkpoint", "nisb-tiny-synthetic", "--cluster", "sync",
                 f"data.val.path={seeds / 'val' / 'seed100'}", f"save_path={tmp_path}", "tune.n_trials=30",
                 "tune.sampler=random", "tune.threshold.step=0.001"]  # 30 distinct decodings: the first runs a while
    first = subprocess.Popen(arguments, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    locks = tmp_path / "tune.sqlite3.locks"
    deadline = time.monotonic() + 120
    while not (locks.exists() and any(locks.iterdir())) and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = subprocess.run(arguments, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.poll() is None, "the first tuner should still be running"
    assert second.returncode == 2, second.stderr
    assert "is being tuned by another run" in second.stderr and f"pid {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert (tuned(tmp_path) / "best.yaml").exists() and not any(locks.iterdir())
    [name] = optuna.get_all_study_names(f"sqlite:///{tmp_path}/tune.sqlite3")
    states = [t.state.name for t in optuna.load_study(study_name=name,
                                                      storage=f"sqlite:///{tmp_path}/tune.sqlite3").trials]
    assert states == ["COMPLETE"] * 30


def test_the_cache_follows_the_validation_seeds_content_and_each_trial_checks_its_affinities(seeds, tmp_path,
                                                                                             monkeypatch):
    """A validation seed replaced at the same path reused the old seed's affinities (NERL 0.006 instead of 0.854,
    exit 0); a tuner paused while another rewrote the cache scored the other's affinities. Now the cache is keyed
    by the image's content, and every trial checks the affinities it scores."""
    import shutil

    import zarr

    from nisbflow.data.volumes import array_url
    from nisbflow.synth import synthesize_seed
    from nisbflow.tune import ThresholdScorer, tune

    val = tmp_path / "val"
    shutil.copytree(seeds / "val" / "seed100", val)
    overrides = [f"data.val.path={val}", f"data.val.skeleton={val / 'skeleton.pkl'}", "tune.sampler=grid",
                 "tune.threshold.low=0.6", "tune.threshold.high=0.8"]
    config = tune_config(seeds, tmp_path, *overrides)
    first = tune(as_run_settings(config, "nisb-tiny-synthetic"), progress=False)
    assert first.affinities == tmp_path / "tune" / SHIPPED / "val-affinities.zarr"
    shutil.rmtree(val)
    synthesize_seed(str(val), (96, 96, 64), seed=7, chunks=(48, 48, 64), progress=False)  # another seed, same path
    said = []
    second = tune(as_run_settings(tune_config(seeds, tmp_path, *overrides, "tune.study_name=second"),
                                  "nisb-tiny-synthetic"), progress=False, log=said.append)
    assert any("inferring it again" in line for line in said), said
    fresh = ThresholdScorer(second.affinities, val / "skeleton.pkl").score_many([0.6, 0.7, 0.8])
    assert second.curve == {t: pytest.approx(r.nerl) for t, r in fresh.items()}
    assert second.curve != first.curve

    import nisbflow.tune.scoring as scoring

    real = scoring.ThresholdScorer.score

    def rewritten_between_trials(self, threshold):  # another run rewrites the cache under a paused tuner
        zarr.open_array(array_url(second.affinities), mode="r+")[0, :8] = 0.0
        return real(self, threshold)

    monkeypatch.setattr(scoring.ThresholdScorer, "score", rewritten_between_trials)
    tpe = tune_config(seeds, tmp_path, *overrides[:2], "tune.study_name=paused", "tune.n_trials=2")
    with pytest.raises(ConfigError, match="changed while this tuning scored them"):
        tune(as_run_settings(tpe, "nisb-tiny-synthetic"), progress=False)


def test_banis_grid_sampler_scores_banis_thresholds(seeds, tmp_path):
    import math

    from nisbflow.tune import banis_grid, tune

    grid = banis_grid()
    assert len(grid) == 13 and grid[0] == 0.450166 and grid[1] == 0.5 and grid[2] == 0.549834 and grid[-1] == 0.90025
    assert grid == [round(1 / (1 + math.exp(-0.2 * k)), 6) for k in range(-1, 12)]
    config = tune_config(seeds, tmp_path, "tune.sampler=banis")
    result = tune(as_run_settings(config, "nisb-tiny-synthetic"), progress=False)
    assert sorted(result.curve) == grid
    with pytest.raises(ConfigError, match="tune.sampler=banis is BANIS's grid"):
        tune(as_run_settings(tune_config(seeds, tmp_path, "tune.sampler=banis", "decoding.method=waterz"),
                             "nisb-tiny-synthetic"), progress=False)
