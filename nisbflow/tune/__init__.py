"""Decoding-threshold search with Optuna on the validation seed (``nisbflow tune``), and applying the result to the
test seed (``nisbflow tune-test``).

Outputs are kept per checkpoint and decoding method: ``<out>/<checkpoint>-<sha256[:8]>/<method>/`` (``best.yaml``,
``threshold_curve.png``, ``test/`` of ``tune-test``), ``<out>`` being ``<save_path>/tune`` unless given; one tuner
works in such a folder at a time (a lock file in it). The affinities of ``data.val.path`` are inferred once per
checkpoint and cached (``<out>/<checkpoint>-<sha256[:8]>/val-affinities.zarr``), reused while the checkpoint, the
image's content (its fingerprint, not its path) and the inference settings are the same; every trial checks that
the affinities it scores are still those (a cache another run rewrote fails the tuning in one line). Each trial
decodes them block-wise at its threshold and scores
``tune.metric`` (NERL by default) against ``data.val.skeleton``; ``tune.sampler=grid`` scores the whole grid from
one multi-threshold decoding pass. The study lives in ``tune.storage`` (sqlite under ``save_path``) with
``load_if_exists``: a later run appends ``tune.n_trials`` trials, and trials an interrupted run left RUNNING are
marked FAIL first. The best parameters go to ``<out>/best.yaml``, a configuration fragment that
``nisbflow test --params`` layers over the configuration.

A study answers one question: its *identity* (:func:`study_identity`) is the checkpoint's hash, the decoding
method and scoring, the validation seed's fingerprint (image and skeleton), the inference geometry, the search space
and what is scored. The study used is ``<tune.study_name>-<12 hex digits of the identity>``, which records the
identity as a user attribute, so trials of another checkpoint, method or seed are never reused. One tuner works on
a study at a time (a lock file beside the storage). ``best.yaml`` records the identity under ``_tuned_``, and
``nisbflow test --params`` refuses a ``best.yaml`` tuned for another checkpoint or decoding method.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nisbflow.errors import ConfigError

from .scoring import ThresholdScorer, threshold_grid, threshold_key

from nisbflow.config.load import TUNED_KEY
from nisbflow.staging import write_file

__all__ = [
    "ThresholdScorer",
    "TuneResult",
    "mark_interrupted_trials_failed",
    "open_study",
    "plot_threshold_curve",
    "threshold_grid",
    "tune",
]


@dataclass
class TuneResult:
    """Outcome of :func:`tune`: the best threshold and its metric value, every scored threshold, the files."""

    best_threshold: float
    best_value: float
    metric: str
    curve: dict[float, float]
    study_name: str
    storage: str
    n_trials: int
    n_failed_marked: int
    params_path: Path
    plot_path: Path | None
    affinities: Path
    details: dict = field(default_factory=dict)


def banis_grid() -> list[float]:
    """BANIS's thresholds (``BANIS.py``'s ``eval_ranges``): ``sigmoid(0.2 k)`` for ``k = -1 … 11``, 13 points from
    0.4502 to 0.9002: the logit thresholds −0.2 … 2.2 on the scale_sigmoid output. Rounded as
    :func:`~nisbflow.tune.scoring.threshold_key` rounds."""
    import math

    return [threshold_key(1 / (1 + math.exp(-0.2 * k))) for k in range(-1, 12)]


GRID_SAMPLERS = ("grid", "banis")
"""Samplers that score a fixed list of thresholds from one decoding pass."""


def _sampler(tune_config, grid: list[float]):
    import optuna

    if tune_config.sampler in GRID_SAMPLERS:
        return optuna.samplers.GridSampler({"threshold": grid}, seed=tune_config.seed)
    if tune_config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=tune_config.seed)
    return optuna.samplers.TPESampler(n_startup_trials=tune_config.n_startup_trials, seed=tune_config.seed)


def _storage_url(url: str) -> str:
    """Create the folder of a ``sqlite:///path`` storage so a first run does not fail on a missing directory."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


IDENTITY_ATTRIBUTE = "nisbflow_identity"
"""The study user attribute that records what the study's trials score (:func:`study_identity`)."""


def study_identity(run, seed_path: str, skeleton: str) -> dict:
    """What decides a trial's score, JSON-ready: the checkpoint (sha256), the decoding method (and waterz's
    scoring), the validation seed (fingerprints of its image and skeleton), the inference geometry that made the
    affinities, the affinity mask, the search space and the metric with its evaluation settings."""
    from nisbflow.fingerprints import fingerprint

    config = run.config
    geometry = _inference_geometry(config)
    search = _search_range(config)
    identity = {
        **run.checkpoint.identity(),
        "method": config.decoding.method,
        "scoring": config.decoding.waterz.scoring if config.decoding.method == "waterz" else None,
        "validation": {"image": fingerprint(f"{seed_path}/data.zarr/img"), "skeleton": fingerprint(skeleton)},
        "inference": geometry,
        "affinity_mask": None
        if config.decoding.affinity_mask_path is None
        else fingerprint(config.decoding.affinity_mask_path),
        "search": {"banis_grid": banis_grid()}
        if config.tune.sampler == "banis"
        else {"low": search.low, "high": search.high, "step": search.step},
        "metric": config.tune.metric,
        "direction": config.tune.direction,
        "merge_threshold": config.evaluation.merge_threshold,
        "voxel_size": list(config.data.voxel_size),
        **(
            {"em_erl_merge_threshold": config.evaluation.em_erl_merge_threshold}
            if config.tune.metric == "em_erl"
            else {}
        ),
    }
    return json.loads(json.dumps(identity, default=str))


def _inference_geometry(config) -> dict:
    """The window settings that decide the affinities (not ``sw_batch_size`` or ``compile``: how they run)."""
    from nisbflow.infer.windows import WindowSettings

    geometry = WindowSettings.from_config(config.inference, offsets=config.model.offsets()).record()
    for key in ("sw_batch_size", "compile"):
        geometry.pop(key, None)
    return geometry


def identity_digest(identity: dict) -> str:
    """12 hex digits naming a study identity."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def open_study(tune_config, grid: list[float], identity: dict | None = None):
    """The study of ``identity`` in ``tune.storage``: ``<tune.study_name>-<identity digest>`` (just
    ``tune.study_name`` without an identity), created, or loaded with ``load_if_exists``. A loaded study must
    record the same identity."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = tune_config.study_name if identity is None else f"{tune_config.study_name}-{identity_digest(identity)}"
    check_study_file(tune_config.storage)
    try:
        study = optuna.create_study(
            storage=_storage_url(tune_config.storage),
            study_name=name,
            sampler=_sampler(tune_config, grid),
            direction=tune_config.direction,
            load_if_exists=tune_config.load_if_exists,
        )
        study.get_trials(deepcopy=False)  # reads every table: a damaged page fails here, not mid-tuning
    except optuna.exceptions.DuplicatedStudyError:
        raise ConfigError(
            f"study {name!r} already exists in {tune_config.storage}; set "
            f"tune.load_if_exists=true to append to it, or choose another tune.study_name"
        ) from None
    except Exception as error:  # sqlalchemy's DatabaseError and kin: a damaged or foreign file
        if not (
            type(error).__module__.split(".")[0] == "sqlalchemy"
            or isinstance(error, optuna.exceptions.StorageInternalError)
        ):
            raise
        raise _damaged_study_file(tune_config.storage, error) from None
    if identity is not None:
        recorded = study.user_attrs.get(IDENTITY_ATTRIBUTE)
        if recorded is None and not study.trials:
            study.set_user_attr(IDENTITY_ATTRIBUTE, identity)
        elif recorded != identity:
            raise ConfigError(
                f"study {name!r} in {tune_config.storage} records another question than this run's "
                "(checkpoint, method, validation seed or search space); choose another "
                "tune.study_name"
            )
    return study


def _damaged_study_file(storage: str, error: BaseException) -> ConfigError:
    cause = getattr(error, "orig", None) or error.__cause__ or error.__context__ or error
    reason = str(getattr(cause, "orig", None) or cause).splitlines()[0]
    where = storage.removeprefix("sqlite:///")
    return ConfigError(
        f"tune.storage {where} cannot be read as an Optuna study database ({reason}); it is damaged "
        f"or not one: move it aside (its trials are lost) to start afresh, or set tune.storage to "
        "another file"
    )


def check_study_file(storage: str) -> None:
    """Refuse a sqlite study file that exists but cannot hold a study: empty (0 bytes, which sqlite would silently
    take as a new database, losing the study it should hold), or not a sqlite database at all."""
    if not storage.startswith("sqlite:///"):
        return
    path = Path(storage.removeprefix("sqlite:///"))
    if not path.exists():
        return
    if path.stat().st_size == 0:
        raise ConfigError(
            f"tune.storage {path} is empty (0 bytes): the study it held is gone (a full disk, a cut "
            f"copy?); delete it to start a new study, or set tune.storage to the study's file"
        )
    with open(path, "rb") as handle:
        header = handle.read(16)
    if header != b"SQLite format 3\x00":
        raise ConfigError(
            f"tune.storage {path} is not a sqlite database (its first bytes are {header[:16]!r}); it "
            "is damaged or another file: move it aside to start afresh, or set tune.storage to the "
            "study's file"
        )


def study_lock(config, study_name: str, log=None):
    """The lock that keeps a second tuner off a study: ``<sqlite file>.locks/<study>.json`` beside a sqlite storage,
    else ``<save_path>/tune-locks/<study>.json``."""
    storage = config.tune.storage
    folder = (
        Path(storage.removeprefix("sqlite:///") + ".locks")
        if storage.startswith("sqlite:///")
        else Path(config.save_path) / "tune-locks"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return _tuner_lock(
        folder / f"{study_name}.json",
        f"study {study_name!r}",
        f"study {study_name!r} in {storage} is being tuned by another run",
        "run one tuner per study",
        log,
    )


def _tuner_lock(path: Path, subject: str, busy: str, advice: str, log=None):
    """A :class:`~nisbflow.locks.RunLock` at ``path`` whose refusal says ``busy`` (naming the holder) and
    ``advice``, or that its lock file is unreadable."""
    from nisbflow.locks import RunLock

    def locked(holder, url):
        if not holder.get("pid"):
            return ConfigError(
                f"{subject}: its lock {url} is unreadable; if no other nisbflow tune works on it, delete {url}"
            )
        return ConfigError(
            f"{busy} (pid {holder.get('pid')} on {holder.get('host', '?')} since "
            f"{holder.get('started', '?')}); {advice}: wait for it, or if that run is gone delete {url}"
        )

    return RunLock(path, locked=locked, log=log, what=subject)


def mark_interrupted_trials_failed(study) -> int:
    """Mark trials left RUNNING (by a run that was killed) as FAIL, so samplers and resumes ignore them."""
    from optuna.trial import TrialState

    storage = study._storage  # the study's own storage object; set_trial_state_values is its public method
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    return len(running)


def checkpoint_folder(root: Path, run) -> Path:
    """The folder under ``root`` of one checkpoint's tuning: ``<file or model name>-<sha256[:8]>`` (``-raw-weights``
    added when a checkpoint that keeps EMA weights is tuned with its training weights)."""
    stem = Path(str(run.checkpoint.name)).name.removesuffix(".pt").removesuffix(".ckpt") or "checkpoint"
    weights = {"raw": "-raw-weights"}.get(run.checkpoint.weights, "")  # a file's EMA and training weights apart
    return root / f"{stem}-{run.checkpoint.sha256[:8]}{weights}"


def cache_key(run, image: str) -> dict:
    """What the cached validation affinities must have been computed from: the checkpoint's hash, the image's content
    fingerprint (:func:`~nisbflow.fingerprints.fingerprint`: a seed replaced at the same path differs) and the window
    settings."""
    from nisbflow.fingerprints import fingerprint, plain

    return json.loads(
        json.dumps(
            dict(
                checkpoint=run.checkpoint.sha256,
                image=image,
                **({"weights": run.checkpoint.weights} if run.checkpoint.weights else {}),
                image_fingerprint=plain(fingerprint(image)),
                settings=_inference_geometry(run.config),
            ),
            default=str,
        )
    )


CACHE_ATTRIBUTE = "nisbflow_tune_cache"
"""The attribute of the cached validation affinities that records their :func:`cache_key`."""


def _cached_affinities(
    run, out: Path, seed_path: str, *, block=None, progress: bool = True, log=print
) -> tuple[Path, dict]:
    """Infer the validation seed once: reuse ``out/val-affinities.zarr`` while it records this run's
    :func:`cache_key` (checkpoint, image content, settings), else infer it again (saying why). Returns the path and
    the key."""
    import zarr

    from nisbflow.data.volumes import array_url
    from nisbflow.infer.blockwise import DEFAULT_BLOCK, infer_to_zarr

    path = out / "val-affinities.zarr"
    key = cache_key(run, f"{seed_path}/data.zarr/img")
    if path.exists():
        try:
            attrs = dict(zarr.open_array(array_url(path), mode="r").attrs)
        except Exception:  # not a readable array: infer again
            attrs = {}
        if attrs.get(CACHE_ATTRIBUTE) == key:
            return path, key
        log(f"{path} was inferred from another checkpoint, image content or settings; inferring it again")
    infer_to_zarr(key["image"], path, run, block=block or DEFAULT_BLOCK, overwrite=True, progress=progress)
    zarr.open_array(array_url(path), mode="r+").attrs[CACHE_ATTRIBUTE] = key
    return path, key


def check_affinities_unchanged(path: Path, key: dict, fingerprint_at_start: dict) -> None:
    """Raise unless the cached affinities at ``path`` still record ``key`` and have the content fingerprint they had
    when tuning started: each trial scores the affinities its study was made for, or none."""
    import zarr

    from nisbflow.data.volumes import array_url
    from nisbflow.fingerprints import fingerprint, plain

    try:
        recorded = dict(zarr.open_array(array_url(path), mode="r").attrs).get(CACHE_ATTRIBUTE)
    except Exception:
        recorded = None
    if recorded != key or plain(fingerprint(path)) != fingerprint_at_start:
        raise ConfigError(
            f"the validation affinities {path} changed while this tuning scored them (another run "
            "rewrote or replaced them); the trials scored before are kept in the study: re-run to go "
            "on, one tuner per checkpoint folder"
        )


def _metric(result, name: str) -> float:
    """A trial's score: a field of the :class:`~nisbflow.evaluate.NerlResult`, or em_erl's NERL."""
    return float(result.em_erl.nerl if name == "em_erl" else getattr(result, name))


def plot_threshold_curve(
    path: str | Path,
    curve: dict[float, float],
    best: float,
    metric: str,
    title: str = "",
    xlabel: str = "decoding threshold (hard edge: affinity > threshold)",
) -> None:
    """PNG of the metric against the decoding threshold, the best threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nisbflow.evaluate.report import save_figure

    thresholds = sorted(curve)
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(thresholds, [curve[t] for t in thresholds], "o-")
    axis.axvline(best, color="grey", linewidth=0.8, label=f"best {best:g}")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(
        {"voi_sum": "VOI sum (bits)", "em_erl": "NERL (em_erl, PyTorch Connectomics')"}.get(metric, metric.upper())
    )
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    save_figure(figure, path, dpi=120)
    plt.close(figure)


def _search_range(config):
    """The threshold range searched: ``tune.threshold`` for connected components, ``tune.waterz_threshold`` for
    agglomeration (``decoding.method``)."""
    return config.tune.waterz_threshold if config.decoding.method == "waterz" else config.tune.threshold


def _record_grid_trials(study, search, metric: str, scorer, thresholds, stepped: bool = True) -> None:
    """Add one finished trial per threshold, with its exact grid value (0.7, not Optuna's 0.7000000000000001);
    ``stepped``: the thresholds lie on ``search``'s steps (else, BANIS's grid, on no step)."""
    import optuna

    distribution = (
        optuna.distributions.FloatDistribution(search.low, search.high, step=search.step)
        if stepped
        else optuna.distributions.FloatDistribution(min(thresholds), max(thresholds))
    )
    for threshold in thresholds:
        result = scorer.score(threshold)
        study.add_trial(
            optuna.trial.create_trial(
                params={"threshold": threshold},
                distributions={"threshold": distribution},
                value=_metric(result, metric),
                user_attrs=_trial_attrs(result, scorer.segments[threshold]),
            )
        )


def _trial_attrs(result, segments: int) -> dict:
    return {
        "nerl": result.nerl,
        "erl_nm": result.erl,
        "voi_sum": result.voi_sum,
        "n_mergers": result.n_mergers,
        "n_splits": result.n_splits,
        "segments": segments,
    }


def tune(run, *, out_dir: str | Path | None = None, block=None, progress: bool = True, log=print) -> TuneResult:
    """Search ``decoding.threshold`` on ``data.val`` with Optuna; write ``best.yaml`` and a threshold curve PNG.

    With ``decoding.method: waterz`` the agglomeration threshold is searched instead (``tune.waterz_threshold``;
    best.yaml then sets ``decoding.waterz.thresholds``), each trial decoding with ``decoding.waterz``'s scoring.

    ``run``: the run's :class:`~nisbflow.settings.RunSettings` (its checkpoint included; a checkpoint alone runs
    with its own settings). Uses the current Dask client for inference and decoding. ``out_dir`` defaults to
    ``<save_path>/tune``. With ``tune.sampler=grid`` the grid points that the study has not scored yet (by any
    sampler) are decoded in one pass and added as trials with their exact grid values.
    """
    from nisbflow.data.volumes import seed_of
    from nisbflow.settings import run_settings_of

    run = run_settings_of(run)
    config = run.config
    seed, skeleton = seed_of(config, "val")
    tune_config = config.tune
    root = checkpoint_folder(Path(out_dir) if out_dir else Path(config.save_path) / "tune", run)
    out = root / config.decoding.method
    out.mkdir(parents=True, exist_ok=True)
    search = _search_range(config)
    if tune_config.sampler == "banis":
        if config.decoding.method != "cc":
            raise ConfigError(
                "tune.sampler=banis is BANIS's grid of connected-components thresholds; for "
                f"decoding.method {config.decoding.method} use tune.sampler=grid"
            )
        grid = banis_grid()
        searched = f"BANIS's {len(grid)} thresholds sigmoid(0.2 k), k = -1…11 ({grid[0]:g}–{grid[-1]:g})"
    else:
        grid = threshold_grid(search.low, search.high, search.step)
        searched = f"thresholds {search.low:g}–{search.high:g} step {search.step:g}"
    identity = study_identity(run, str(seed.path), str(skeleton))
    study = open_study(tune_config, grid, identity)
    log(
        f"study {study.study_name!r} in {tune_config.storage}: checkpoint {run.checkpoint.name} (sha256 "
        f"{run.checkpoint.short_sha256}), {config.decoding.method} decoding, validation seed {config.data.val.path}, "
        f"{searched}; outputs in {out}"
    )
    lock, folder_lock = study_lock(config, study.study_name, log=log), _folder_lock(out, log)
    lock.acquire()
    try:
        folder_lock.acquire()
        try:
            return _tune_study(run, study, identity, seed, skeleton, search, grid, out, block, progress, log)
        finally:
            folder_lock.release()
    finally:
        lock.release()


def _folder_lock(out: Path, log=None):
    """The lock that keeps a second tuner out of one checkpoint's and method's tuning folder (its best.yaml, curve
    and test output), whatever study it tunes."""
    return _tuner_lock(
        out / ".tune-lock.json",
        f"tuning folder {out}",
        f"tuning folder {out} is in use by another tuner",
        "its best.yaml would be overwritten",
        log,
    )


def _tune_study(run, study, identity, seed, skeleton, search, grid, out: Path, block, progress, log) -> TuneResult:
    """:func:`tune` once its study is open and locked."""
    from optuna.trial import TrialState

    from nisbflow.fingerprints import fingerprint, plain

    tune_config = run.config.tune
    marked = mark_interrupted_trials_failed(study)
    if marked:
        log(f"marked {marked} trial(s) left RUNNING by an interrupted run as FAIL")
    affinities, key = _cached_affinities(run, out.parent, str(seed.path), block=block, progress=progress, log=log)
    at_start = plain(fingerprint(affinities))
    check_affinities_unchanged(affinities, key, at_start)
    scorer = _scorer(run.config, affinities, skeleton, out)

    def unchanged() -> None:
        check_affinities_unchanged(affinities, key, at_start)

    _run_trials(study, tune_config, scorer, search, grid, unchanged, progress, log)
    completed = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if "threshold" in t.params]
    if not completed:
        raise ConfigError(f"study {study.study_name!r} has no completed trials")
    curve = {threshold_key(t.params["threshold"]): float(t.value) for t in completed}
    best = study.best_trial
    best_threshold = threshold_key(best.params["threshold"])
    params_path, plot_path = _write_best(run, study, identity, out, best, best_threshold, curve, len(completed))
    return TuneResult(
        best_threshold,
        float(best.value),
        tune_config.metric,
        dict(sorted(curve.items())),
        study.study_name,
        tune_config.storage,
        len(completed),
        marked,
        params_path,
        plot_path,
        affinities,
        details=dict(best.user_attrs),
    )


def _scorer(config, affinities, skeleton, out: Path) -> ThresholdScorer:
    """The scorer of a study's trials on the cached validation affinities, by the run's decoding and evaluation."""
    from nisbflow.decode.agglomerate_blockwise import WaterzOptions

    return ThresholdScorer(
        affinities,
        skeleton,
        voxel_size=config.data.voxel_size,
        merge_threshold=config.evaluation.merge_threshold,
        mask=config.decoding.affinity_mask_path,
        backend=config.decoding.backend,
        scratch=out / "scratch",
        progress=False,
        method=config.decoding.method,
        waterz=WaterzOptions.from_config(config.decoding),
        metrics=("nerl", "em_erl") if config.tune.metric == "em_erl" else ("nerl",),
        em_erl_merge_threshold=config.evaluation.em_erl_merge_threshold,
    )


def _run_trials(study, tune_config, scorer: ThresholdScorer, search, grid, unchanged, progress, log) -> None:
    """The study's trials: the grid points not yet in it, scored from one decoding pass, or ``n_trials`` of the
    sampler; ``unchanged()`` refuses affinities rewritten under the study."""
    from optuna.trial import TrialState

    done = {
        threshold_key(t.params["threshold"])
        for t in study.get_trials(states=(TrialState.COMPLETE,))
        if "threshold" in t.params
    }
    if tune_config.sampler in GRID_SAMPLERS:
        todo = [t for t in grid if t not in done]
        if todo:  # one multi-threshold decoding pass scores the whole remaining grid
            log(f"grid: scoring {len(todo)} thresholds not yet in the study from one decoding pass")
            scorer.score_many(todo)
            unchanged()
            _record_grid_trials(study, search, tune_config.metric, scorer, todo, stepped=tune_config.sampler == "grid")
        else:
            log("the threshold grid is already complete in this study")
        return

    def objective(trial) -> float:
        threshold = threshold_key(trial.suggest_float("threshold", search.low, search.high, step=search.step))
        unchanged()
        result = scorer.score(threshold)
        unchanged()  # nor while it was scored
        for name, value in _trial_attrs(result, scorer.segments[threshold]).items():
            trial.set_user_attr(name, value)
        return _metric(result, tune_config.metric)

    from nisbflow.tasks import progress_bar

    with progress_bar(progress) as bar:
        task = bar.add_task(f"tune: {tune_config.sampler} trials", total=tune_config.n_trials)
        study.optimize(objective, n_trials=tune_config.n_trials, callbacks=[lambda *_: bar.advance(task)])


def _write_best(
    run, study, identity, out: Path, best, best_threshold: float, curve: dict, n_completed: int
) -> tuple[Path, Path]:
    """``best.yaml`` (the best setting, with the ``_tuned_`` record of what it was tuned for) and the curve's plot."""
    config, tune_config = run.config, run.config.tune
    params_path = out / "best.yaml"
    header = (
        f"# nisbflow tune: best {tune_config.metric} {best.value:.4f} on {config.data.val.path} "
        f"(study {study.study_name}, {n_completed} completed trials, checkpoint {run.checkpoint.name}, "
        f"sha256 {run.checkpoint.sha256})\n"
    )
    tuned = {
        TUNED_KEY: {
            "checkpoint": run.checkpoint.name,
            "checkpoint_sha256": run.checkpoint.sha256,
            **({"weights": run.checkpoint.weights} if run.checkpoint.weights else {}),
            "method": config.decoding.method,
            "study": study.study_name,
            "storage": tune_config.storage,
            "validation": str(config.data.val.path),
            "identity": identity_digest(identity),
        }
    }
    best_params = (
        {"decoding": {"method": "waterz", "waterz": {"thresholds": [best_threshold]}}}
        if config.decoding.method == "waterz"
        else {"decoding": {"threshold": best_threshold}}
    )
    write_file(
        params_path, header + yaml.safe_dump(tuned, sort_keys=False) + yaml.safe_dump(best_params, sort_keys=False)
    )
    plot_path = out / "threshold_curve.png"
    plot_threshold_curve(
        plot_path,
        curve,
        best_threshold,
        tune_config.metric,
        title=f"{Path(str(config.data.val.path)).name}: {tune_config.metric} by threshold",
        **(
            {"xlabel": f"agglomeration threshold ({config.decoding.waterz.scoring})"}
            if config.decoding.method == "waterz"
            else {}
        ),
    )
    return params_path, plot_path
