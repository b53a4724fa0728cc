"""Inference: MedNeXt from MONAI, checkpoints, and whole-volume sliding-window prediction against a naive loop."""

import itertools

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nisbflow.data.volumes import array_url
from nisbflow.config.schema import ModelConfig
from nisbflow.errors import VolumeError
from nisbflow.infer.predict import predict_whole
from nisbflow.model import ARCHITECTURES, Checkpoint, CheckpointError, build, load_checkpoint, save_checkpoint
from nisbflow_cli.main import app

TINY = ARCHITECTURES["tiny"]


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build(TINY).eval()


def naive_prediction(image, model, window, stride):
    """One window at a time: weight = chessboard distance to the window faces + 1, sigmoid(0.2 · logit)."""
    shape = image.shape
    starts = []
    for size, w, s in zip(shape, window, stride):
        axis = list(range(0, size - w + 1, s))
        if axis[-1] != size - w:
            axis.append(size - w)
        starts.append(axis)
    total = np.zeros((6,) + shape)
    weights = np.zeros(shape)
    local = [np.arange(w) for w in window]
    distance = np.minimum.reduce(np.meshgrid(*[np.minimum(a, a[::-1]) for a in local], indexing="ij"))
    for start in itertools.product(*starts):
        region = tuple(slice(s, s + w) for s, w in zip(start, window))
        crop = torch.from_numpy(image[region].astype(np.float32) / 255)[None, None]
        with torch.no_grad():
            prediction = torch.sigmoid(0.2 * model(crop))[0].numpy()
        total[(slice(None),) + region] += prediction * (distance + 1)
        weights[region] += distance + 1
    return total / weights


def test_mednext_s_is_monais_create_mednext():
    from monai.networks.nets.mednext import create_mednext

    model = build(ModelConfig())
    reference = create_mednext("S", spatial_dims=3, in_channels=1, out_channels=6, kernel_size=3)
    assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in reference.parameters()]


def test_whole_volume_prediction_equals_a_naive_window_loop(tiny_model):
    image = np.random.default_rng(1).integers(0, 256, (72, 60, 32), dtype=np.uint8)
    ours = predict_whole(image, tiny_model, window=(32, 32, 32), stride=(16, 16, 16), sw_batch_size=3,
                         output_dtype="float32")
    expected = naive_prediction(image, tiny_model, (32, 32, 32), (16, 16, 16))
    assert ours.shape == (6, 72, 60, 32)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    half = predict_whole(image[..., None], tiny_model, window=(32, 32, 32), stride=(16, 16, 16), channels=[0, 1, 2])
    assert half.dtype == np.float16 and half.shape == (3, 72, 60, 32)
    np.testing.assert_allclose(half, expected[:3], atol=1e-3)


def test_axes_shorter_than_the_window_are_padded_and_cropped(tiny_model):
    image = np.random.default_rng(2).integers(0, 256, (40, 19, 32), dtype=np.uint8)
    ours = predict_whole(image, tiny_model, window=(32, 32, 32), stride=(16, 16, 16), output_dtype="float32")
    padded = np.pad(image, [(0, 0), (0, 13), (0, 0)], mode="reflect")
    expected = naive_prediction(padded, tiny_model, (32, 32, 32), (16, 16, 16))[:, :, :19]
    assert ours.shape == (6, 40, 19, 32)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_checkpoint_round_trip_and_lightning_layout(tiny_model, tmp_path):
    save_checkpoint(tmp_path / "tiny.pt", tiny_model, TINY, step=3)
    loaded, config = load_checkpoint(tmp_path / "tiny.pt", expected=TINY)
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), tiny_model(x))
    assert config == TINY
    torch.save({"state_dict": {f"model.{k}": v for k, v in tiny_model.state_dict().items()},
                "hyper_parameters": {"model": TINY.model_dump(mode="json")}, "global_step": 10},
               tmp_path / "lightning.ckpt")
    lightning, _ = load_checkpoint(tmp_path / "lightning.ckpt")
    with torch.no_grad():
        assert torch.equal(lightning(x), tiny_model(x))


def test_bad_inputs(tiny_model, tmp_path):
    with pytest.raises(VolumeError, match="uint8.*float32"):
        predict_whole(np.zeros((32, 32, 32), dtype=np.float32), tiny_model, window=(32, 32, 32), stride=(16, 16, 16))
    with pytest.raises(VolumeError, match=r"\(X, Y, Z\).*\(32, 32\)"):
        predict_whole(np.zeros((32, 32), dtype=np.uint8), tiny_model, window=(32, 32, 32), stride=(16, 16, 16))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    save_checkpoint(tmp_path / "tiny.pt", tiny_model, TINY)
    with pytest.raises(CheckpointError, match="init_filters=4.*init_filters=32"):
        load_checkpoint(tmp_path / "tiny.pt", expected=ModelConfig())
    three = ModelConfig(init_filters=4, out_channels=3, affinity_offsets=["1-0-0", "0-1-0", "0-0-1"])
    with pytest.raises(CheckpointError, match="out_channels=6.*out_channels=3"):
        load_checkpoint(tmp_path / "tiny.pt", expected=three)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_cli_model_init(tmp_path):
    result = CliRunner().invoke(app, ["model", "init", str(tmp_path / "tiny.pt"), "--arch", "tiny"])
    assert result.exit_code == 0, result.output
    model, config = load_checkpoint(tmp_path / "tiny.pt")
    assert config.init_filters == 4 and "parameters" in result.output
    again = CliRunner().invoke(app, ["model", "init", str(tmp_path / "tiny.pt"), "--arch", "tiny"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = CliRunner().invoke(app, ["model", "init", str(tmp_path / "x.pt"), "--arch", "unet"])
    assert bad.exit_code != 0 and "mednext-s" in bad.output


def test_chunked_prediction_equals_whole_for_any_chunking(tiny_model):
    import dask
    import dask.array as da

    from nisbflow.infer.blockwise import WindowSettings, predict_affinities, predict_affinities_whole

    image = np.random.default_rng(3).integers(0, 256, (72, 60, 40), dtype=np.uint8)
    settings = WindowSettings(window=(32, 32, 32), stride=(16, 16, 16), sw_batch_size=4, output_dtype="float32")
    whole = predict_affinities_whole(image, tiny_model, settings)
    assert isinstance(whole, np.ndarray)
    with dask.config.set(scheduler="synchronous"):
        for block in [(72, 60, 40), (24, 20, 40), (25, 17, 13), (7, 60, 40)]:
            lazy = predict_affinities(da.from_array(image, chunks=(30, 30, 30)), tiny_model, settings, block=block)
            assert isinstance(lazy, da.Array) and lazy.shape == (6, 72, 60, 40)
            np.testing.assert_allclose(lazy.compute(), whole, atol=1e-6)
        from_numpy = predict_affinities(image, tiny_model, settings, block=(25, 17, 13))  # one type whatever the input
        assert isinstance(from_numpy, da.Array)
        np.testing.assert_allclose(from_numpy.compute(), whole, atol=1e-6)


def test_infer_to_zarr_resumes_after_an_interruption(tiny_model, tmp_path, monkeypatch):
    """A run interrupted after some blocks resumes with the rest: the output equals an uninterrupted run to the bit,
    and the redundancy it reports is against the windows the remaining blocks need (not the whole grid)."""
    import dask
    import zarr

    import nisbflow.infer.blockwise as blockwise
    from nisbflow.errors import OutputExistsError

    image = np.random.default_rng(4).integers(0, 256, (64, 48, 32), dtype=np.uint8)
    zarr.create_array(str(tmp_path / "img.zarr"), shape=image.shape, chunks=(32, 32, 32), dtype="uint8")[...] = image
    save_checkpoint(tmp_path / "tiny.pt", tiny_model, TINY)
    settings = blockwise.WindowSettings(window=(32, 32, 32), stride=(16, 16, 16), sw_batch_size=4)
    with dask.config.set(scheduler="synchronous"):
        reference = blockwise.infer_to_zarr(tmp_path / "img.zarr", tmp_path / "ref.zarr", tmp_path / "tiny.pt",
                                            window=settings, block=(32, 24, 32), progress=False)
        assert reference.blocks == 4 and reference.blocks_skipped == 0
        assert reference.windows_computed == reference.windows_in_grid == 3 * 2 * 1 and reference.redundancy == 1.0
        expected = zarr.open_array(array_url(str(tmp_path / "ref.zarr")))[...]
        np.testing.assert_allclose(expected.astype(np.float32),
                                   predict_whole(image, tiny_model, window=(32, 32, 32), stride=(16, 16, 16),
                                                 output_dtype="float32"), atol=1e-3)
        stored = []
        original = blockwise._store_block

        def crashing(*args, **kwargs):
            if len(stored) == 2:
                raise KeyboardInterrupt("interrupted")
            stored.append(args[2])
            return original(*args, **kwargs)

        monkeypatch.setattr(blockwise, "_store_block", crashing)
        with pytest.raises(KeyboardInterrupt):
            blockwise.infer_to_zarr(tmp_path / "img.zarr", tmp_path / "out.zarr", tmp_path / "tiny.pt",
                                    window=settings, block=(32, 24, 32), progress=False)
        assert not (tmp_path / "out.zarr").exists() and len(stored) == 2
        monkeypatch.setattr(blockwise, "_store_block", original)
        resumed = blockwise.infer_to_zarr(tmp_path / "img.zarr", tmp_path / "out.zarr", tmp_path / "tiny.pt",
                                          window=settings, block=(32, 24, 32), progress=False)
        assert resumed.blocks_skipped == 2 and resumed.blocks == 4
        # a plain count: the grid windows reaching a block not stored before the interruption
        grid = [list(range(0, 64 - 31, 16)), list(range(0, 48 - 31, 16)), [0]]
        left = [w for w in itertools.product(*[((0, 32), (32, 64)), ((0, 24), (24, 48)), ((0, 32),)])
                if tuple(slice(*r) for r in w) not in stored]
        needed = {start for start in itertools.product(*grid) for region in left
                  if all(s < hi and s + 32 > lo for s, (lo, hi) in zip(start, region))}
        assert resumed.windows_needed == len(needed) == 4
        # finished blocks' windows run in the batches of the uninterrupted run (so the output is the same to the
        # bit): here one batch of 4 windows of which 2 are needed
        assert resumed.windows_computed == 6 and resumed.redundancy == 6 / 4
        assert "the 2 remaining blocks need" in resumed.windows_line()
        assert np.array_equal(zarr.open_array(array_url(str(tmp_path / "out.zarr")))[...], expected)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["img.zarr", "out.zarr", "ref.zarr", "tiny.pt"]
        with pytest.raises(OutputExistsError):
            blockwise.infer_to_zarr(tmp_path / "img.zarr", tmp_path / "out.zarr", tmp_path / "tiny.pt",
                                    window=settings, progress=False)


def test_cli_infer_blockwise_and_whole_agree(tiny_model, tmp_path):
    import zarr

    image = np.random.default_rng(5).integers(0, 256, (64, 40, 32, 1), dtype=np.uint8)
    zarr.create_array(str(tmp_path / "img.zarr"), shape=image.shape, chunks=(32, 32, 32, 1), dtype="uint8")[...] = image
    save_checkpoint(tmp_path / "tiny.pt", tiny_model, TINY)
    common = ["--checkpoint", str(tmp_path / "tiny.pt"), "inference.window_size=[32,32,32]", "--channels", "0,1,2"]
    runner = CliRunner()
    result = runner.invoke(app, ["infer", str(tmp_path / "img.zarr"), str(tmp_path / "a.zarr"), "--cluster", "sync",
                                 "--chunks", "32,24,32", *common])
    assert result.exit_code == 0, result.output
    assert "redundancy" in result.output
    whole = runner.invoke(app, ["infer", str(tmp_path / "img.zarr"), str(tmp_path / "b.zarr"), "--whole", *common])
    assert whole.exit_code == 0, whole.output
    a, b = zarr.open_array(array_url(str(tmp_path / "a.zarr"))), zarr.open_array(array_url(str(tmp_path / "b.zarr")))
    assert a.shape == b.shape == (3, 64, 40, 32) and a.dtype == np.float16
    np.testing.assert_allclose(a[...].astype(np.float32), b[...].astype(np.float32), atol=1e-3)
    assert a.attrs["checkpoint_sha256"] and a.attrs["offsets"] == ["1-0-0", "0-1-0", "0-0-1"]
    refused = runner.invoke(app, ["infer", str(tmp_path / "img.zarr"), str(tmp_path / "a.zarr"), "--cluster", "sync",
                                  *common])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    bad = runner.invoke(app, ["infer", str(tmp_path / "img.zarr"), str(tmp_path / "c.zarr"), "--cluster", "sync",
                              "--checkpoint", str(tmp_path / "missing.pt")])
    assert bad.exit_code != 0 and "missing.pt" in bad.output


def test_cli_test_runs_infer_decode_evaluate(tiny_model, tmp_path):
    import json

    from nisbflow.synth import synthesize_seed

    synthesize_seed(str(tmp_path / "seed101"), (64, 64, 32), seed=9, chunks=(32, 32, 32), progress=False)
    save_checkpoint(tmp_path / "tiny.pt", tiny_model, TINY)
    result = CliRunner().invoke(app, [
        "test", "--checkpoint", str(tmp_path / "tiny.pt"), "--config", "configs/tiny.yaml", "--cluster", "sync",
        f"data.test.path={tmp_path / 'seed101'}", f"data.test.skeleton={tmp_path / 'seed101' / 'skeleton.pkl'}",
        f"save_path={tmp_path / 'runs'}", "inference.window_size=[32,32,32]", "decoding.threshold=0.5"])
    assert result.exit_code == 0, result.output
    [run] = list((tmp_path / "runs").iterdir())
    assert sorted(p.name for p in run.iterdir()) == ["affinities.zarr", "metrics.json", "segmentation.zarr"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["nerl"] <= 1.0 and metrics["threshold"] == 0.5 and "NERL" in result.output


def test_a_unit_reads_only_the_image_chunks_of_its_footprint():
    import dask
    import dask.array as da

    from nisbflow.blocks import BlockGrid
    from nisbflow.infer.blockwise import WindowSettings, _read_task
    from nisbflow.infer.plan import plan_windows

    image = da.zeros((256, 256, 64), chunks=64, dtype=np.uint8)
    settings = WindowSettings(window=(32, 32, 32), stride=(16, 16, 16))
    grid = BlockGrid.regular(image.shape, (64, 64, 64))
    plan = plan_windows(grid, settings.window, settings.stride, settings.sw_batch_size)
    # block (1, 1, 0) predicts the windows starting in it: 64, 80, 96, 112 along X and Y, so its footprint ends
    # one window minus one stride past the block
    assert plan.units[(1, 1, 0, 0)].footprint == (slice(64, 144), slice(64, 144), slice(0, 64))
    task = _read_task(image, plan.units[(1, 1, 0, 0)].footprint, settings, ("infer-read-t", 1, 1, 0, 0))
    (optimized,) = dask.optimize(task)
    reads = {k for k in dict(optimized.__dask_graph__()) if isinstance(k, tuple) and "zeros" in k[0]}
    assert len(reads) == 4  # the 2 × 2 × 1 chunks of [64, 144)², not all 16


def test_only_prediction_tasks_ask_for_the_gpu():
    """On CUDA a unit's prediction holds the GPU resource; the image chunk reads, the footprint assembly, the
    blending and the zarr write do not, so they overlap with the GPU's work on another unit."""
    import dask.array as da

    from nisbflow.infer.blockwise import WindowSettings, predict_affinities

    image = da.zeros((96, 64, 64), chunks=32, dtype=np.uint8)
    lazy = predict_affinities(image, Checkpoint.open("nisb-tiny-synthetic"),
                              WindowSettings(window=(32, 32, 32), stride=(16, 16, 16), channels=(0, 1, 2)),
                              block=(48, 64, 64), device="cuda")
    resources = {}  # per task key: its resource annotation (per layer, or per key in a merged delayed layer)
    for layer in lazy.__dask_graph__().layers.values():
        given = (layer.annotations or {}).get("resources")
        for key in layer.keys():
            value = given(key) if callable(given) else given
            resources[key] = value if isinstance(value, dict) else None
    prefix = {key: str(key[0] if isinstance(key, tuple) else key).rsplit("-", 1)[0] for key in resources}
    gpu = [key for key, value in resources.items() if value]
    assert len(gpu) == 2 and all(prefix[key] == "infer-predict-windows" for key in gpu)  # one per block
    assert all(resources[key] == {"GPU": 1} for key in gpu)
    others = {prefix[key] for key, value in resources.items() if not value}
    assert {"infer-read", "infer-pieces", "infer-blend"} <= others  # none of them holds the GPU


@pytest.mark.slow
def test_compiled_prediction_equals_eager(tiny_model, tmp_path):
    """``inference.compile=true`` (torch.compile, the last batch padded to one shape) blends the same affinities."""
    import dask
    import dask.array as da
    import torch._dynamo

    from nisbflow.infer.blockwise import WindowSettings, predict_affinities

    save_checkpoint(tmp_path / "tiny.pt", tiny_model, TINY)
    torch._dynamo.reset()

    image = np.random.default_rng(3).integers(0, 255, (48, 48, 40), dtype=np.uint8)
    results = []
    for compiled in (False, True, "reduce-overhead"):
        settings = WindowSettings(window=(32, 32, 32), stride=(16, 16, 16), sw_batch_size=3, channels=(0, 1, 2),
                                  output_dtype="float32", compile=compiled)
        with dask.config.set(scheduler="synchronous"):
            results.append(predict_affinities(da.from_array(image, chunks=24), Checkpoint.open(tmp_path / "tiny.pt"),
                                              settings, block=(24, 48, 40), device="cpu").compute())
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile, not fall back silently
    np.testing.assert_allclose(results[1], results[0], atol=1e-5)
    np.testing.assert_allclose(results[2], results[0], atol=1e-5)


def test_inference_compile_takes_torch_compile_modes():
    """``inference.compile``: true/false/auto, or a torch.compile mode (``reduce-overhead``: CUDA graphs), which the
    network is compiled with wherever it runs; anything else is refused when the settings are read."""
    from pydantic import ValidationError

    from nisbflow.config.schema import InferenceConfig
    from nisbflow.infer.blockwise import WindowSettings

    expected = {"auto": (False, True), True: (True, True), False: (False, False),
                "reduce-overhead": ("reduce-overhead", "reduce-overhead"), "max-autotune": ("max-autotune",) * 2}
    for given, (on_cpu, on_cuda) in expected.items():
        settings = WindowSettings.from_config(InferenceConfig(compile=given))
        assert (settings.compile_mode("cpu"), settings.compile_mode("cuda")) == (on_cpu, on_cuda), given
        assert settings.record()["compile"] == given
    with pytest.raises(ValidationError, match="compile"):
        InferenceConfig(compile="fastest")


class CountingModel(torch.nn.Module):
    """The network, counting the windows it is given."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.windows = inner, 0

    def forward(self, x):
        self.windows += x.shape[0]
        return self.inner(x)


def test_every_grid_window_runs_once_whatever_the_blocks_and_split(tiny_model):
    """Whatever the block size (odd, thinner than a window, one block) and ``split``, the network sees every window
    of the global grid exactly once (counted by wrapping the model), and the blocks equal the whole-volume
    reference."""
    import dask
    import dask.array as da

    from nisbflow.infer.blockwise import WindowSettings, predict_affinities, predict_affinities_whole
    from nisbflow.infer.geometry import window_grid

    image = np.random.default_rng(7).integers(0, 256, (72, 60, 40), dtype=np.uint8)
    settings = WindowSettings(window=(32, 32, 32), stride=(16, 16, 16), sw_batch_size=3, output_dtype="float32",
                              channels=tuple(range(6)))
    whole = predict_affinities_whole(image, tiny_model, settings)
    n_grid = int(np.prod([len(g) for g in window_grid(image.shape, (32, 32, 32), (16, 16, 16))]))
    with dask.config.set(scheduler="synchronous"):
        for block, split in [((72, 60, 40), 1), ((25, 17, 13), 1), ((7, 60, 40), 1), ((40, 60, 40), 1),
                             ((72, 60, 40), 2), ((72, 60, 40), 1000), ((40, 60, 40), 3), ((25, 17, 13), 2)]:
            counting = CountingModel(tiny_model)
            lazy = predict_affinities(da.from_array(image, chunks=(30, 30, 30)), counting, settings, block=block,
                                      split=split)
            np.testing.assert_allclose(lazy.compute(), whole, atol=1e-6, err_msg=str((block, split)))
            assert counting.windows == n_grid, (block, split)
            units = {k[1:] for k in dict(lazy.__dask_graph__()) if isinstance(k, tuple)
                     and str(k[0]).startswith("infer-predict-windows-")}
            if block == image.shape:  # one block: its windows split among min(split, windows) tasks
                assert len(units) == min(split, n_grid), (block, split)


def test_split_below_one_is_refused_before_anything_is_written(tmp_path):
    from nisbflow.errors import ConfigError
    from nisbflow.infer.blockwise import infer_to_zarr

    with pytest.raises(ConfigError, match="--split 0: the number of tasks per block must be at least 1"):
        infer_to_zarr(tmp_path / "img.zarr", tmp_path / "out.zarr", "nisb-tiny-synthetic", split=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_warm_up_compiles_only_when_the_network_is_compiled(tiny_model, tmp_path):
    """``inference.compile``: ``auto`` compiles on CUDA only, so a CPU cluster gets no warm-up; ``warm_up`` itself
    runs one batch through the cached model and reports its seconds."""
    from distributed import Client, LocalCluster

    from nisbflow.infer.device import warm_up_workers
    from nisbflow.infer.windows import WindowSettings, warm_up

    save_checkpoint(tmp_path / "tiny.pt", tiny_model, TINY)
    model = Checkpoint.open(tmp_path / "tiny.pt")
    settings = WindowSettings(window=(32, 32, 32), stride=(16, 16, 16), sw_batch_size=2, compile="auto")
    assert warm_up_workers(model, settings, None) is None  # no client
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster):
        assert warm_up_workers(model, settings, None) is None  # auto on a CPU cluster: eager, nothing to compile
        assert warm_up_workers(model, WindowSettings(window=(32, 32, 32), compile=False), "cpu") is None
    assert warm_up(model, settings, "cpu") > 0


@pytest.mark.slow
def test_compiled_warm_up_runs_on_every_worker_and_blocks_equal_eager(tiny_model, tmp_path):
    """``inference.compile=true`` on a LocalCluster: ``warm_up_workers`` compiles on each worker process before the
    blocks (the workers' dynamo counters show a graph), and ``infer_to_zarr`` then writes what eager writes."""
    import zarr
    from distributed import Client, LocalCluster

    from nisbflow.infer.blockwise import WindowSettings, infer_to_zarr
    from nisbflow.infer.device import warm_up_workers

    save_checkpoint(tmp_path / "tiny.pt", tiny_model, TINY)
    image = np.random.default_rng(4).integers(0, 256, (48, 40, 40), dtype=np.uint8)
    zarr.create_array(str(tmp_path / "img.zarr"), data=image, chunks=(32, 32, 32))
    outputs = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        for compiled in (False, True):
            settings = WindowSettings(window=(32, 32, 32), stride=(16, 16, 16), sw_batch_size=2, channels=(0, 1, 2),
                                      output_dtype="float32", compile=compiled)
            summary = infer_to_zarr(tmp_path / "img.zarr", tmp_path / f"aff-{compiled}.zarr", str(tmp_path / "tiny.pt"),
                                    window=settings, block=(32, 32, 40), progress=False)
            assert (summary.warm_up_seconds is not None) == compiled
            outputs[compiled] = zarr.open_array(array_url(tmp_path / f"aff-{compiled}.zarr"), mode="r")[...]

        def graphs():
            import torch._dynamo

            return torch._dynamo.utils.counters["stats"]["unique_graphs"]

        assert all(n >= 1 for n in client.run(graphs).values())  # each worker process compiled
        assert warm_up_workers(Checkpoint.open(tmp_path / "tiny.pt"), settings, None) > 0
    np.testing.assert_allclose(outputs[True], outputs[False], atol=1e-5)


def test_on_a_cpu_the_window_batch_is_fitted_to_the_workers_memory_or_refused(tmp_path):
    """MedNeXt-S at the default sw_batch_size=8 took 22.9 GB on a CPU and was killed; now the batch is lowered to
    what a task can hold (said in one line, recorded in the output), and a worker too small for one window is
    refused with the numbers before anything is written."""
    from nisbflow.cluster import cluster_client
    from nisbflow.infer.blockwise import infer_to_zarr
    from nisbflow.infer.memory import InferenceMemoryError, task_peak
    from nisbflow.model import Checkpoint
    from nisbflow.synth import synthesize_seed

    synthesize_seed(tmp_path / "seed", (96, 96, 48), seed=2, chunks=(48, 48, 48), progress=False)
    image = str(tmp_path / "seed/data.zarr/img")
    model = Checkpoint.open("nisb-tiny-synthetic").model
    import zarr

    one, two = (task_peak(model, (64, 64, 64), (96, 96, 48), 3, batch) for batch in (1, 2))
    assert two.network == 2 * one.network > 2 * 4 * 64 ** 3  # activations counted per window, above the input
    assert one.block_sums == 4 * 96 * 96 * 48 * 4  # three channels and the weights, float32
    said = []
    with cluster_client("local", n_workers=1, memory_limit="1GiB", dashboard_address=":0"):
        infer_to_zarr(image, tmp_path / "fitted.zarr", _shipped_run(["inference.sw_batch_size=8"]), progress=False,
                      log=said.append)
        [line] = [s for s in said if "inference.sw_batch_size 8 →" in s]
        fitted = int(line.split("→ ")[1].split()[0])
        assert 1 <= fitted < 8 and "on the CPU, so a task fits worker tcp://" in line and "1.00 GiB" in line
        budget = 0.75 * 2**30
        # a task's sums cover its windows' footprint: Z, shorter than the window, is padded to it
        assert "weighted sums 9.00 MiB over a 96×96×64 footprint" in line
        assert task_peak(model, (64, 64, 64), (96, 96, 64), 3, fitted).total <= budget
        assert task_peak(model, (64, 64, 64), (96, 96, 64), 3, fitted + 1).total > budget
        recorded = zarr.open_array(array_url(tmp_path / "fitted.zarr"), mode="r").attrs["nisbflow_settings"]
        kept = []
        infer_to_zarr(image, tmp_path / "explicit.zarr", _shipped_run([f"inference.sw_batch_size={fitted}"]),
                      progress=False, log=kept.append)
        # a batch that fits is kept and its estimate said before the run
        [estimate] = [s for s in kept if s.startswith("inference: about ")]
        expected = task_peak(model, (64, 64, 64), (96, 96, 64), 3, fitted)
        from dask.utils import format_bytes

        assert f"about {format_bytes(expected.total)} per prediction task" in estimate
        assert f"{fitted} window(s) at once" in estimate and "has 1.00 GiB per task" in estimate
    assert np.array_equal(zarr.open_array(array_url(tmp_path / "fitted.zarr"))[...],
                          zarr.open_array(array_url(tmp_path / "explicit.zarr"))[...])
    assert recorded["checkpoint"] == "nisb-tiny-synthetic"
    with cluster_client("local", n_workers=1, memory_limit="700MiB", dashboard_address=":0"):
        with pytest.raises(InferenceMemoryError, match="needs about .* even one window at a time .* but worker "
                                                       "tcp://.* has 700.00 MiB per task"):
            infer_to_zarr(image, tmp_path / "refused.zarr", "nisb-tiny-synthetic", progress=False)
    assert not (tmp_path / ".refused.zarr.nisbflow-run").exists()


def _shipped_run(overrides):
    from nisbflow.settings import resolve_settings

    return resolve_settings("nisb-tiny-synthetic", overrides=overrides)


def test_a_checkpoint_rewritten_after_the_client_read_it_is_refused_by_the_workers(tiny_model, tmp_path, monkeypatch):
    """The client resolves the checkpoint once (its sha256 goes into the run's identity and the output's
    attributes); workers load the file themselves. A file replaced in between (a training run saving over it) must
    not be predicted with: the tasks fail with one line naming both hashes, and nothing is published. Through the
    library entry on worker processes, and through ``nisbflow infer`` (exit 2, one line)."""
    import zarr
    from distributed import Client, LocalCluster

    from nisbflow.infer.blockwise import infer_to_zarr
    from nisbflow.settings import resolve_settings

    save_checkpoint(tmp_path / "tiny.pt", tiny_model, TINY)
    zarr.create_array(str(tmp_path / "img.zarr"), data=np.random.default_rng(5).integers(0, 256, (48, 40, 40),
                                                                                          dtype=np.uint8),
                      chunks=(32, 32, 32))
    run = resolve_settings(str(tmp_path / "tiny.pt"), overrides={"data.patch_size": [32, 32, 32]})
    client_sha = run.checkpoint.sha256
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "tiny.pt", build(TINY), TINY)  # rewritten after the client read it
    worker_sha = Checkpoint.open(tmp_path / "tiny.pt").sha256
    assert worker_sha != client_sha
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster):
        with pytest.raises(CheckpointError) as refused:
            infer_to_zarr(tmp_path / "img.zarr", tmp_path / "aff.zarr", run, block=(32, 32, 40), progress=False)
    message = str(refused.value)
    assert "\n" not in message and f"has sha256 {worker_sha}, not {client_sha}" in message
    assert "replaced or rewritten during the run" in message
    assert not (tmp_path / "aff.zarr").exists()

    # the command: the file changes right after the client's one read of it
    import nisbflow.model.checkpoint as checkpoint_module

    original = checkpoint_module.Checkpoint.open.__func__

    def open_then_rewrite(cls, checkpoint, weights=None):
        handle = original(cls, checkpoint, weights)
        if str(checkpoint).endswith("tiny.pt"):
            torch.manual_seed(2)
            save_checkpoint(tmp_path / "tiny.pt", build(TINY), TINY)
        return handle

    monkeypatch.setattr(checkpoint_module.Checkpoint, "open", classmethod(open_then_rewrite))
    result = CliRunner().invoke(app, ["infer", str(tmp_path / "img.zarr"), str(tmp_path / "cli.zarr"),
                                      "--checkpoint", str(tmp_path / "tiny.pt"), "--chunks", "32,32,40",
                                      "--workers", "1", "data.patch_size=[32,32,32]"])
    assert result.exit_code == 2, result.output
    [line] = [s for s in result.output.splitlines() if s.startswith("error:")]
    assert "replaced or rewritten during the run" in " ".join(result.output.split())
    assert not (tmp_path / "cli.zarr").exists()


def test_windows_are_counted_inside_a_block_in_the_terminal_and_on_the_workers(tiny_model, tmp_path, capsys):
    """One block on a real LocalCluster: the bar counts windows (not only blocks, which sit at 0/1 until the end),
    the worker's dashboard counter (its Workers-page metrics) holds the windows it predicted, and counts sent from
    tasks reach the client's bar while the run goes on."""
    import time

    import zarr

    from nisbflow.cluster import cluster_client
    from nisbflow.infer.blockwise import WindowSettings, infer_to_zarr
    from nisbflow.tasks import Counter, _counting, count_done, progress_bar

    image = np.random.default_rng(8).integers(0, 256, (64, 48, 40), dtype=np.uint8)
    zarr.create_array(str(tmp_path / "img.zarr"), shape=image.shape, chunks=(32, 32, 40), dtype="uint8")[...] = image
    save_checkpoint(tmp_path / "tiny.pt", tiny_model, TINY)
    settings = WindowSettings(window=(32, 32, 32), stride=(16, 16, 16), sw_batch_size=4, channels=(0, 1, 2))
    with cluster_client("local", n_workers=1, memory_limit="2GiB", dashboard_address=":0") as client:
        summary = infer_to_zarr(tmp_path / "img.zarr", tmp_path / "out.zarr", tmp_path / "tiny.pt", window=settings,
                                block=image.shape, progress=True)
        assert summary.windows_computed == summary.windows_in_grid == 3 * 2 * 2 and summary.redundancy == 1.0
        printed = capsys.readouterr()
        assert "infer: windows" in printed.out + printed.err and "12/12" in printed.out + printed.err
        deadline, seen = time.monotonic() + 15, None
        while time.monotonic() < deadline:
            [worker] = client.scheduler_info()["workers"].values()
            seen = worker["metrics"].get("windows_predicted")
            if seen == 12:
                break
            time.sleep(0.2)
        assert seen == 12 and "windows_per_s" in worker["metrics"]

        bar = progress_bar(False)
        with _counting(bar, Counter("nisbflow-test-topic", "work", 10, "windows"), client) as counting:
            client.gather(client.map(lambda i: count_done("nisbflow-test-topic", 2), range(5), pure=False))
            deadline = time.monotonic() + 15
            while bar.tasks[counting.task].completed < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert bar.tasks[counting.task].completed == 10  # events, before the end sets it to the total
    bar = progress_bar(False)
    with _counting(bar, Counter("nisbflow-local-topic", "work", 10, "windows"), None) as counting:
        count_done("nisbflow-local-topic", 3)
        assert bar.tasks[counting.task].completed == 3  # no client: tasks in this process report directly
    whole = predict_whole(image, tiny_model, window=(32, 32, 32), stride=(16, 16, 16), channels=[0, 1, 2])
    np.testing.assert_allclose(zarr.open_array(array_url(str(tmp_path / "out.zarr")))[...].astype(np.float32),
                               whole.astype(np.float32), atol=1e-3)
