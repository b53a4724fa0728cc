"""The one typed configuration schema of nisbflow.

Defaults are the BANIS ``train_base_long`` reproduction as the NISB tutorial nisbflow's users come from describes
it (MedNeXt-S/k3, 200 k steps; ``configs/base_banis.yaml`` spells the values out and says where PyTorch
Connectomics' current files differ); key names follow that tutorial so users can copy overrides such as
``system.num_gpus=4 data.dataloader.batch_size=2`` unchanged.
YAML files and ``a.b.c=value`` overrides only *set* values of this schema (see :mod:`nisbflow.config.load`).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BANIS_AFFINITY_OFFSETS = ["1-0-0", "0-1-0", "0-0-1", "10-0-0", "0-10-0", "0-0-10"]
MEDNEXT_DOWNSAMPLING = 16
"""MedNeXt halves every spatial axis four times: network inputs (windows) must be multiples of 16 voxels."""


def parse_offset(text: str) -> tuple[int, int, int]:
    """Parse an affinity offset written the PyTorch Connectomics way, ``"10-0-0"`` → ``(10, 0, 0)`` (x, y, z voxels)."""
    parts = str(text).split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"affinity offset {text!r} must be three non-negative integers joined by '-', e.g. '1-0-0'")
    offset = tuple(int(p) for p in parts)
    if sum(1 for p in offset if p) != 1:
        raise ValueError(f"affinity offset {text!r} must be non-zero along exactly one axis (banis mode)")
    return offset  # type: ignore[return-value]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SlurmConfig(_Section):
    """dask-jobqueue ``SLURMCluster`` settings for ``system.cluster: slurm`` (one Dask worker process per job).

    A setting left unset (None) comes from dask-jobqueue's configuration (``jobqueue.slurm.*``, e.g.
    ``DASK_CONFIG=deploy/slurm``), else from nisbflow's fallback (8 cores, 32GiB, 04:00:00); ``nisbflow config show``
    prints the result and the job script (:mod:`nisbflow.slurm`)."""

    queue: str | None = Field(None, description="Partition (sbatch -p).")
    account: str | None = Field(None, description="Account to charge (sbatch -A).")
    cores: int | None = Field(None, gt=0, description="Cores per job (None: jobqueue.slurm.cores, else 8).")
    memory: str | None = Field(
        None,
        description="Memory per job, also the Dask worker's memory limit (None: jobqueue.slurm.memory, else 32GiB).",
    )
    walltime: str | None = Field(None, description="Time limit per job (None: jobqueue.slurm.walltime, else 04:00:00).")
    jobs: int = Field(4, gt=0, description="Jobs (workers) to start; --workers overrides.")
    gpus: int | None = Field(
        None,
        ge=0,
        description="GPUs per job, 0 or 1 (one Dask worker per job): 1 adds "
        "--gres=gpu:1 and the worker's GPU resource; None: what the directives request.",
    )
    job_extra_directives: list[str] | None = Field(
        None, description="Extra #SBATCH lines, e.g. '--gres=gpu:1' (None: jobqueue.slurm.job-extra-directives)."
    )
    local_directory: str | None = Field(
        None, description="Worker scratch space on the compute node (None: jobqueue.slurm.local-directory)."
    )


class SystemConfig(_Section):
    num_gpus: int = Field(-1, ge=-1, description="GPUs to use; -1 = every visible GPU.")
    num_workers: int = Field(-1, ge=-1, description="Data-loader / Dask workers; -1 = chosen from the CPU count.")
    cluster: str = Field("local", description="local | dask-cuda | slurm | sync | tcp://scheduler:8786")
    memory_limit: str = Field("auto", description="Memory per local Dask worker, e.g. '4GiB'; 'auto' splits the RAM.")
    threads_per_worker: int = Field(1, gt=0, description="Threads per local Dask worker (kernels release the GIL).")
    tasks_per_gpu: int = Field(
        1,
        gt=0,
        description="Prediction blocks a dask-cuda worker runs on its GPU at once "
        "(its GPU resource); 2 overlaps one block's upload and download with the next "
        "block's windows, at twice the GPU memory.",
    )
    dashboard_address: str = Field(
        "127.0.0.1:0",
        description="Dashboard of the clusters nisbflow starts: "
        "'127.0.0.1:0' (default) any free port on this machine only (reach it from "
        "elsewhere with ssh -L); '127.0.0.1:8787' a fixed port; ':8787' or "
        "'0.0.0.0:8787' every interface, reachable by other hosts.",
    )
    slurm: SlurmConfig = SlurmConfig()


class SplitConfig(_Section):
    path: str | None = Field(None, description="NISB seed folder(s) holding data.zarr (a glob or a list for train).")
    skeleton: str | None = Field(None, description="skeleton.pkl (or converted .json/.npz) for NERL.")


class DataLoaderConfig(_Section):
    batch_size: int = Field(4, gt=0, description="Patches per GPU per step.")


class DataConfig(_Section):
    voxel_size: tuple[float, float, float] = Field((9.0, 9.0, 20.0), description="Voxel size in nm, (x, y, z).")
    patch_size: tuple[int, int, int] = Field((128, 128, 128), description="Training patch in voxels, (x, y, z).")
    target_context: int = Field(10, ge=0, description="Trailing voxels read past the patch for long-range targets.")
    normalize: Literal["divide-255"] = "divide-255"
    train: SplitConfig = SplitConfig()
    val: SplitConfig = SplitConfig()
    test: SplitConfig = SplitConfig()
    dataloader: DataLoaderConfig = DataLoaderConfig()
    erosion: int = Field(0, ge=0, description="Widen instance borders by this many voxels in-plane (0 = off).")
    relabel_connected_components: bool = Field(
        True,
        description="Relabel each training crop's segmentation into "
        "connected components (BANIS: true; PyTorch Connectomics' current "
        "NISB recipe: false).",
    )
    relabel_connectivity: Literal[6, 18, 26] = Field(6, description="Connectivity of that relabelling (BANIS: 6).")

    @field_validator("voxel_size")
    @classmethod
    def _positive_voxels(cls, value):
        if any(v <= 0 for v in value):
            raise ValueError(f"voxel sizes must be positive nm, got {list(value)}")
        return value

    @field_validator("patch_size")
    @classmethod
    def _positive_patch(cls, value):
        if any(v <= 0 for v in value):
            raise ValueError(f"patch sizes must be positive voxel counts, got {list(value)}")
        return value


class ModelConfig(_Section):
    arch: Literal["mednext"] = "mednext"
    size: Literal["S", "B", "M", "L"] = "S"
    init_filters: int = Field(32, gt=0, description="Channels of the first stage (MedNeXt default 32).")
    kernel_size: Literal[3, 5] = 3
    in_channels: int = Field(1, gt=0)
    out_channels: int = Field(6, gt=0)
    deep_supervision: bool = Field(
        False,
        description="Only false: nisbflow trains without deep supervision, as BANIS; true is refused, not ignored.",
    )
    activation_checkpointing: bool = Field(
        False,
        description="Recompute each MedNeXt block's activations in the "
        "backward pass (MIC-DKFZ's checkpoint_style: outside_block): less GPU "
        "memory, the same gradients, about a third more time per step.",
    )
    loss: Literal["WeightedBCEWithLogitsLoss", "PerChannelBCEWithLogitsLoss"] = Field(
        "WeightedBCEWithLogitsLoss",
        description="WeightedBCEWithLogitsLoss: BANIS's masked BCE, one mean over every "
        "kept voxel of every channel. PerChannelBCEWithLogitsLoss: BANIS+'s (PyTorch Connectomics'), a masked BCE per "
        "channel, each with its own positive weight (auto_pos_weight), the channel means summed.",
    )
    auto_pos_weight: bool = Field(
        True,
        description="PerChannelBCEWithLogitsLoss: weight each channel's positive "
        "voxels by min(negatives / positives, max_pos_weight), counted over the batch's "
        "kept voxels (1 where a channel has no positive).",
    )
    max_pos_weight: float = Field(10.0, gt=0, description="PerChannelBCEWithLogitsLoss: the cap on that weight.")
    affinity_mode: Literal["banis"] = "banis"
    affinity_offsets: list[str] = Field(default_factory=lambda: list(BANIS_AFFINITY_OFFSETS))

    @field_validator("deep_supervision")
    @classmethod
    def _no_deep_supervision(cls, value):
        if value:
            raise ValueError("deep supervision is not implemented in nisbflow's training (BANIS trains without it)")
        return value

    @field_validator("affinity_offsets")
    @classmethod
    def _valid_offsets(cls, value):
        for text in value:
            parse_offset(text)
        return value

    @model_validator(mode="after")
    def _channels_match_offsets(self):
        if self.out_channels != len(self.affinity_offsets):
            raise ValueError(
                f"model.out_channels ({self.out_channels}) must equal the number of "
                f"model.affinity_offsets ({len(self.affinity_offsets)})"
            )
        return self

    def offsets(self) -> list[tuple[int, int, int]]:
        """Affinity offsets as (x, y, z) voxel tuples, in channel order."""
        return [parse_offset(t) for t in self.affinity_offsets]


class OptimizerConfig(_Section):
    name: Literal["AdamW"] = "AdamW"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class SchedulerConfig(_Section):
    name: Literal["cosine"] = "cosine"
    min_lr: float = Field(0.0, ge=0)


class CheckpointConfig(_Section):
    monitor: str = "val_loss_total"
    mode: Literal["min", "max"] = "min"
    save_top_k: int = Field(3, ge=-1)
    every_n_train_steps: int = Field(50000, gt=0)
    save_last: bool = True


class EmaConfig(_Section):
    enabled: bool = Field(
        False,
        description="Keep an exponential moving average of the weights (BANIS+), saved in "
        "every checkpoint beside the training weights; infer, test and tune use it "
        "(inference.weights).",
    )
    decay: float = Field(0.999, ge=0, lt=1, description="Per step: ema = decay · ema + (1 − decay) · weights.")
    warmup_steps: int = Field(0, ge=0, description="The first warmup_steps updates copy the weights (decay 0).")
    validate_with_ema: bool = Field(
        True,
        description="Validation losses (and so the best checkpoints) from the EMA weights, as PyTorch Connectomics.",
    )


class OptimizationConfig(_Section):
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    max_steps: int = Field(200000, gt=0)
    n_steps_per_epoch: int = Field(
        5000,
        gt=0,
        description="Steps per 'epoch': TensorBoard's train_loss_total_epoch "
        "is the mean training loss of each (PyTorch Connectomics' name).",
    )
    val_check_interval: int = Field(5000, gt=0)
    val_steps_per_epoch: int = Field(100, ge=0)
    precision: Literal["16-mixed", "bf16-mixed", "32", "32-true"] = "16-mixed"
    gradient_clip_val: float = Field(1.0, ge=0)
    checkpoint: CheckpointConfig = CheckpointConfig()
    ema: EmaConfig = EmaConfig()

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value):
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # `precision=32`


class TtaConfig(_Section):
    enabled: bool = Field(
        False,
        description="Test-time augmentation: every window is predicted in each view (flips, "
        "quarter turns), turned back with its affinities re-anchored, and the views ensembled per "
        "channel (docs/inference.md).",
    )
    flip_axes: Literal["all", "none"] | list[list[int]] = Field(
        "all",
        description="all: the 8 subsets of x, y, z; none; or a list of axis lists (0 = x, 1 = y, 2 = z), each "
        "a view beside the identity.",
    )
    rotation90_axes: Literal["all", "none"] | list[list[int]] | None = Field(
        None,
        description="Planes of quarter turns combined with every flip (all: xy, xz, yz); the window must be "
        "square in each plane.",
    )
    rotate90_k: list[int] | None = Field(None, description="The quarter turns (default 0, 1, 2, 3).")
    ensemble_mode: Literal["mean", "min", "max"] | list[tuple[str, Literal["mean", "min", "max"]]] = Field(
        "mean",
        description="mean, min or max over the views valid at a voxel, or [[channels, mode], …] over the "
        "kept channels, e.g. [['0:3', 'min'], ['3:', 'mean']].",
    )


InferenceWeights = Literal["auto", "ema", "raw"]
INFERENCE_WEIGHTS: tuple[str, ...] = get_args(InferenceWeights)
"""Which weights of a checkpoint predict (``inference.weights``, ``--weights``): auto (the EMA weights when it keeps
them), ema, raw (the training weights)."""


class InferenceConfig(_Section):
    window_size: tuple[int, int, int] = Field(
        (128, 128, 128), description="Sliding window in voxels, (x, y, z); multiples of 16 for MedNeXt."
    )
    overlap: float = Field(0.5, ge=0, lt=1, description="Window overlap; stride = window × (1 − overlap).")
    blending: Literal["distance_transform"] = "distance_transform"
    snap_to_edge: bool = Field(
        True,
        description="Only true: the last window of each axis ends at the volume's edge, "
        "as BANIS's patched_inference places it; false is refused, not ignored.",
    )
    sw_batch_size: int = Field(8, gt=0)
    output_dtype: Literal["float16", "float32"] = "float16"
    activation: Literal["scale_sigmoid", "sigmoid"] = "scale_sigmoid"
    select_channel: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        description="Output channels to keep (0, 1, 2: the short-range affinities that decoding reads).",
    )
    compile: bool | Literal["auto", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "auto",
        description="torch.compile the network ('auto': on CUDA only; a torch.compile mode name: compiled "
        "in that mode, e.g. 'reduce-overhead' for CUDA graphs). Compiled once per worker before "
        "the blocks (about a minute for MedNeXt-S), then 2.2× eager's blocks/s on an H200 "
        "(docs/BENCHMARKS.md); false for small volumes.",
    )
    test_time_augmentation: TtaConfig = TtaConfig()
    weights: InferenceWeights = Field(
        "auto",
        description="Which weights of a checkpoint that holds two sets predict: auto (the EMA weights when "
        "it keeps them, as PyTorch Connectomics tests with validate_with_ema; else its only set), ema, or raw (the "
        "training weights). --weights on the command line.",
    )

    @field_validator("snap_to_edge")
    @classmethod
    def _snapped(cls, value):
        if not value:
            raise ValueError(
                "nisbflow's window grid always ends at the volume's edge, as BANIS's patched_inference "
                "does (docs/inference.md); a grid that pads past the edge is not implemented"
            )
        return value

    @field_validator("window_size")
    @classmethod
    def _window_multiple_of_downsampling(cls, value):
        if any(w <= 0 or w % MEDNEXT_DOWNSAMPLING for w in value):
            suggestion = [
                max(MEDNEXT_DOWNSAMPLING, round(w / MEDNEXT_DOWNSAMPLING) * MEDNEXT_DOWNSAMPLING) for w in value
            ]
            raise ValueError(
                f"window sizes {list(value)} must be positive multiples of {MEDNEXT_DOWNSAMPLING} "
                f"(MedNeXt downsamples four times by 2), e.g. {suggestion}"
            )
        return value

    @field_validator("select_channel")
    @classmethod
    def _distinct_channels(cls, value):
        if not value or len(set(value)) != len(value) or any(c < 0 for c in value):
            raise ValueError(f"{value} must be a non-empty list of distinct output channels (0-based)")
        return value

    @model_validator(mode="after")
    def _stride_in_window(self):
        for w in self.window_size:
            stride = round(w * (1 - self.overlap))
            if not 0 < stride <= w:
                raise ValueError(
                    f"inference.overlap {self.overlap} gives a stride of {stride} voxels for a "
                    f"{w}-voxel window; the stride must be in (0, {w}]"
                )
        return self

    @model_validator(mode="after")
    def _augmentations_fit(self):
        tta = self.test_time_augmentation
        if not tta.enabled:
            return self
        from nisbflow.infer.tta import ensemble_modes, views

        for view in views(tta.flip_axes, tta.rotation90_axes, tta.rotate90_k):
            if (
                view.plane is not None
                and view.k % 2
                and self.window_size[view.plane[0]] != self.window_size[view.plane[1]]
            ):
                raise ValueError(
                    f"inference.test_time_augmentation turns windows a quarter in the "
                    f"{''.join('xyz'[a] for a in view.plane)} plane, but the window "
                    f"{list(self.window_size)} is not square there"
                )
        ensemble_modes(tta.ensemble_mode, len(self.select_channel))
        return self


WATERZ_SCORING_NAMES = ("mean_aff",) + tuple(f"aff{q}_his256" for q in range(10, 100, 5))
"""waterz scoring functions by PyTorch Connectomics' names (all precompiled in waterz's wheels)."""


class WaterzConfig(_Section):
    """``decoding.method: waterz``: watershed fragments, then greedy agglomeration (the waterz package)."""

    thresholds: list[float] = Field(
        default_factory=lambda: [0.3],
        min_length=1,
        description="Agglomeration thresholds in [0, 1]: merge while the cheapest edge "
        "scores below one. Several are decoded from one pass.",
    )
    scoring: str = Field(
        "aff85_his256",
        description="Edge scoring function: mean_aff, or affQ_his256 (Q = 10, 15, "
        "…, 95: one minus the Q-th percentile of the edge's affinities, "
        "PyTorch Connectomics' names).",
    )
    aff_low: float = Field(
        0.0001, ge=0, le=1, description="Watershed: voxels whose strongest edge is at most this are background."
    )
    aff_high: float = Field(0.9999, ge=0, le=1, description="Watershed: edges of at least this join their voxels.")
    context: int = Field(
        8,
        ge=0,
        description="Block-wise only: voxels of affinities each block's watershed reads "
        "beyond its write region on every side, so fragments near a block "
        "face are the whole volume's.",
    )

    @field_validator("thresholds")
    @classmethod
    def _in_unit_interval(cls, values):
        for value in values:
            if isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"every threshold must be a number in [0, 1], got {value}")
        return values

    @field_validator("scoring")
    @classmethod
    def _known_scoring(cls, value):
        if value not in WATERZ_SCORING_NAMES:
            raise ValueError(
                f"unknown scoring function {value!r}: use mean_aff or affQ_his256 with Q in 10, 15, …, "
                "95 (e.g. aff50_his256, aff85_his256)"
            )
        return value

    @model_validator(mode="after")
    def _ordered(self):
        if not self.aff_low < self.aff_high:
            raise ValueError(f"decoding.waterz.aff_low ({self.aff_low}) must be below aff_high ({self.aff_high})")
        return self


class DecodingConfig(_Section):
    name: Literal["decode_affinity_cc"] = "decode_affinity_cc"
    method: Literal["cc", "waterz"] = Field(
        "cc",
        description="cc: connected components of affinities > threshold (BANIS); waterz: watershed + agglomeration.",
    )
    threshold: float = Field(0.75, ge=0, le=1, description="Hard edge: affinity > threshold (strict).")
    backend: Literal["numba", "cupy"] = "numba"
    edge_offset: Literal[0] = Field(0, description="0 = source-voxel affinity storage (BANIS); the only supported one.")
    affinity_mask_path: str | None = None
    waterz: WaterzConfig = WaterzConfig()

    def thresholds(self) -> list[float]:
        """The thresholds the chosen method decodes at: ``[threshold]`` for cc, ``waterz.thresholds`` for waterz."""
        return list(self.waterz.thresholds) if self.method == "waterz" else [self.threshold]

    def with_threshold(self, threshold: float) -> DecodingConfig:
        """A copy decoding at ``threshold`` alone with the chosen method."""
        if self.method == "waterz":
            return self.model_copy(update={"waterz": self.waterz.model_copy(update={"thresholds": [threshold]})})
        return self.model_copy(update={"threshold": threshold})

    @field_validator("threshold", mode="before")
    @classmethod
    def _number_not_boolean(cls, value):
        if isinstance(value, bool):  # YAML reads `true` as a boolean, which pydantic would turn into 1.0
            raise ValueError("must be a number in [0, 1], not a boolean")
        return value


class EvaluationConfig(_Section):
    metrics: list[Literal["nerl", "em_erl"]] = Field(
        default_factory=lambda: list[Literal["nerl", "em_erl"]](["nerl"]),
        description="Skeleton metrics of `nisbflow test`'s metrics.json: nerl (BANIS's metrics.py over "
        "funlib.evaluate, the NISB leaderboard's; always computed, with skeleton VOI) and em_erl "
        "(PyTorch Connectomics' NERL, em_erl's rules).",
    )
    merge_threshold: int = Field(1, ge=1, description="Skeleton nodes in a segment that make it a merger (BANIS: 1).")
    em_erl_merge_threshold: int = Field(
        50,
        ge=1,
        description="em_erl's merge threshold (PyTorch Connectomics' NISB "
        "tutorial, evaluation.nerl_merge_threshold: 50).",
    )


class ThresholdSearchConfig(_Section):
    low: float = Field(0.4, ge=0, le=1)
    high: float = Field(0.9, ge=0, le=1)
    step: float = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"tune.threshold.low ({self.low}) must not exceed tune.threshold.high ({self.high})")
        return self


class TuneConfig(_Section):
    sampler: Literal["TPE", "grid", "random", "banis"] = Field(
        "TPE",
        description="TPE (the NISB tutorial's), grid (tune.threshold's steps, one decoding pass), random, or "
        "banis (BANIS.py's 13 thresholds sigmoid(0.2 k), k = -1…11, 0.4502–0.9002, one pass).",
    )
    n_startup_trials: int = Field(4, ge=0)
    n_trials: int = Field(4, gt=0)
    threshold: ThresholdSearchConfig = Field(
        ThresholdSearchConfig(), description="decoding.threshold's search range (decoding.method: cc)."
    )
    waterz_threshold: ThresholdSearchConfig = Field(
        ThresholdSearchConfig(low=0.1, high=0.7, step=0.1),
        description="decoding.waterz.thresholds' search range (decoding.method: waterz).",
    )
    metric: Literal["nerl", "erl", "voi_sum", "em_erl"] = Field(
        "nerl",
        description="What a trial scores: nerl (BANIS's NERL), erl, voi_sum, or em_erl (PyTorch "
        "Connectomics' NERL at evaluation.em_erl_merge_threshold).",
    )
    direction: Literal["maximize", "minimize"] = "maximize"
    study_name: str | None = Field(
        None, description="Optuna study; default <experiment_name>_<decoding.method>_tuning."
    )
    storage: str | None = Field(None, description="Optuna storage URL; default sqlite under save_path.")
    load_if_exists: bool = True
    seed: int | None = Field(0, description="Sampler seed (null: a different search every run).")


class Config(_Section):
    experiment_name: str = "nisb_base_banis"
    save_path: str | None = Field(None, description="Output folder; default outputs/<experiment_name>.")
    system: SystemConfig = SystemConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimization: OptimizationConfig = OptimizationConfig()
    inference: InferenceConfig = InferenceConfig()
    decoding: DecodingConfig = DecodingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _derived_paths(self):
        if self.save_path is None:
            object.__setattr__(self, "save_path", f"outputs/{self.experiment_name}")
        if self.tune.storage is None:
            object.__setattr__(self.tune, "storage", f"sqlite:///{self.save_path}/tune.sqlite3")
        if self.tune.study_name is None:
            object.__setattr__(self.tune, "study_name", f"{self.experiment_name}_{self.decoding.method}_tuning")
        if any(c >= self.model.out_channels for c in self.inference.select_channel):
            raise ValueError(
                f"inference.select_channel {self.inference.select_channel} must be channels of the "
                f"{self.model.out_channels}-channel model output (0 to {self.model.out_channels - 1})"
            )
        return self


def valid_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, sections included (``data``, ``data.train``, ``data.train.path``, …)."""
    model = Config if model is None else model
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(valid_keys(annotation, dotted + "."))
    return keys
