"""Test-time augmentation equals PyTorch Connectomics' own (tests/fixtures/peers/make_tta_fixture.py ran its
TTAPredictor on a fixed network and input): its views, the re-anchoring of flipped affinities, validity and the
per-channel ensemble. A flip-equivariant network's ensemble equals its plain prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nisbflow.config.schema import BANIS_AFFINITY_OFFSETS, parse_offset
from nisbflow.errors import ConfigError
from nisbflow.infer.predict import apply_model
from nisbflow.infer.tta import View, ensemble_modes, predict_views, restore, views

FIXTURE = Path(__file__).parent / "fixtures" / "peers" / "recipe_tta.npz"
OFFSETS = [parse_offset(o) for o in BANIS_AFFINITY_OFFSETS]
CASES = {
    "flips_mean": ("all", None, "mean", [0, 1, 2, 3, 4, 5]),
    "flips_min_short": ("all", None, "min", [0, 1, 2]),
    "flips_rot_xy_split": ("all", [[0, 1]], [["0:3", "min"], ["3:", "mean"]], [0, 1, 2, 3, 4, 5]),
    "flip_z_max": ([[2]], None, "max", [0, 1, 2, 3, 4, 5]),
}


def _network(data):
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(),
                                  torch.nn.Conv3d(4, 6, 3, padding=1)).eval()
    network.load_state_dict({k.split("/", 1)[1]: torch.from_numpy(data[k]) for k in data.files
                             if k.startswith("weights/")})
    return network


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_ensemble_equals_pytorch_connectomics(case):
    data = np.load(FIXTURE)
    network = _network(data)
    flips, planes, mode, channels = CASES[case]
    image = torch.from_numpy(data["image"])[None, None]  # uint8 (1, 1, X, Y, Z)
    ours = predict_views(lambda crops: apply_model(network, crops[:, 0], "scale_sigmoid"), image,
                         views(flips, planes), OFFSETS, channels, ensemble_modes(mode, len(channels)))
    np.testing.assert_allclose(ours[0].numpy(), data[f"case/{case}"], rtol=0, atol=1e-3)  # float16 rounding
    assert float(np.abs(ours[0].numpy() - data[f"case/{case}"]).max()) < 1e-5


def test_views_follow_pytorch_connectomics_rules():
    assert len(views("all")) == 8 and views("all")[0].identity
    assert [v.flips for v in views([[2], [0, 1]])] == [(), (2,), (0, 1)]
    assert views("none") == [View()]
    rotated = views("all", [[0, 1]])
    assert len(rotated) == 16  # 8 flips × 4 turns, the duplicates (e.g. flip xy = a half turn) kept once
    with pytest.raises(ConfigError, match="not a spatial axis"):
        views([[3]])
    with pytest.raises(ConfigError, match="gives no mode to output channel"):
        ensemble_modes([["0:3", "min"]], 6)


def test_a_flip_re_anchors_source_voxel_edges():
    """Flipping x turns edge (v, v+10) into (v, v−10): the 10-voxel x channel moves by −10 and its last 10 x-voxels
    are invalid; written from the rule as a plain loop."""
    shape = (16, 5, 4)
    values = torch.randn((1, 6) + shape)
    view = View((0,))
    predicted_in_view = torch.flip(values, dims=[2])  # what a view-equivariant network predicts on the flipped input
    restored, valid = restore(predicted_in_view, view, OFFSETS)
    flipped_back = torch.flip(predicted_in_view, dims=[2])
    for x in range(shape[0]):
        for channel, reach in ((0, 1), (3, 10)):  # x edges: re-anchored
            if x + reach < shape[0]:
                assert torch.equal(restored[0, channel, x], flipped_back[0, channel, x + reach])
    assert valid[0] == (slice(0, 15), slice(0, 5), slice(0, 4)) and valid[3] == (slice(0, 6), slice(0, 5), slice(0, 4))
    assert valid[1] is None and torch.equal(restored[0, 1], values[0, 1])  # y and z edges stay


def test_a_flip_equivariant_network_ensembles_to_its_plain_prediction():
    """Affinities of a fixed segmentation are flip-equivariant as edges: the ensemble of 'predict the flipped
    volume's affinities' over all 8 flips, with re-anchoring, equals the affinities themselves (without it, the
    flipped views blur them by one voxel)."""
    from nisbflow.data.affinities import affinities

    rng = np.random.default_rng(0)
    segmentation = rng.integers(1, 4, (12, 11, 10)).repeat(2, axis=0)[:12]

    def predict(batch):
        out = []
        for crop in batch[:, 0].numpy():
            targets, _ = affinities(crop.astype(np.int64), OFFSETS)
            out.append(torch.from_numpy(targets.astype(np.float32)))
        return torch.stack(out)

    volume = torch.from_numpy(segmentation)[None, None]
    plain = predict(volume)
    for mode in ("mean", "min", "max"):
        ensembled = predict_views(predict, volume, views("all"), OFFSETS, None, ensemble_modes(mode, 6))
        assert torch.equal(ensembled, plain), mode


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    from nisbflow.synth import synthesize_seed

    root = tmp_path_factory.mktemp("tta")
    synthesize_seed(str(root / "seed"), (56, 48, 40), seed=12, chunks=(32, 32, 32), progress=False)
    return root / "seed"


TTA = ["inference.window_size=[32,32,32]", "inference.test_time_augmentation.enabled=true",
       "inference.test_time_augmentation.ensemble_mode=[['0:2','min'],['2:','mean']]"]


def test_block_wise_augmented_inference_equals_the_whole_volume_and_records_its_views(seed, tmp_path):
    import zarr
    from typer.testing import CliRunner

    from nisbflow_cli.main import app

    image = str(seed / "data.zarr" / "img")
    runs = {}
    for name, extra in (("whole", ["--whole"]), ("blocks", ["--chunks", "24,24,24"]), ("plain", [])):
        argv = ["infer", image, str(tmp_path / f"{name}.zarr"), "--checkpoint", "nisb-tiny-synthetic", "--cluster",
                "sync", *extra, *(TTA if name != "plain" else TTA[:1])]
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, result.output
        runs[name] = (result.output, zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r")["0"])
    whole, blocks, plain = (runs[n][1] for n in ("whole", "blocks", "plain"))
    np.testing.assert_allclose(blocks[:].astype(np.float32), whole[:].astype(np.float32), atol=2e-3)
    assert float(np.abs(blocks[:].astype(np.float32) - plain[:].astype(np.float32)).max()) > 1e-3
    recorded = blocks.attrs["nisbflow_settings"]["inference"]["test_time_augmentation"]
    assert len(recorded["views"]) == 8 and recorded["ensemble"] == ["min", "min", "mean"]
    assert "× 8 views" in runs["blocks"][0]


def test_an_augmented_window_is_the_ensemble_of_its_views(seed):
    """One window (the image is the window): predict_whole with augmentation equals the TTA kernel on the image."""
    import zarr

    from nisbflow.infer.predict import Augmentation, predict_whole
    from nisbflow.model import Checkpoint

    network = Checkpoint.open("nisb-tiny-synthetic").network("cpu")
    image = np.asarray(zarr.open_array(str(seed / "data.zarr" / "img"), mode="r")[:32, :32, :32, 0])
    augmentation = Augmentation(tuple(views("all", [[0, 1]])), ("max", "mean", "min"), tuple(OFFSETS))
    whole = predict_whole(image, network, window=(32, 32, 32), stride=(16, 16, 16), channels=(0, 1, 2),
                          output_dtype="float32", augmentation=augmentation)
    kernel = predict_views(lambda crops: apply_model(network, crops[:, 0], "scale_sigmoid"),
                           torch.from_numpy(image)[None, None], list(augmentation.views), OFFSETS, (0, 1, 2),
                           ["max", "mean", "min"])[0].numpy()
    np.testing.assert_allclose(whole, kernel, rtol=0, atol=1e-6)


def test_augmentation_settings_are_checked_before_any_work():
    from nisbflow.config import load_config

    with pytest.raises(ConfigError, match="not square there"):
        load_config(None, ["inference.window_size=[32,32,16]", "inference.test_time_augmentation.enabled=true",
                           "inference.test_time_augmentation.rotation90_axes=[[1,2]]"])
    with pytest.raises(ConfigError, match="gives no mode to output channel"):
        load_config(None, ["inference.test_time_augmentation.enabled=true",
                           "inference.test_time_augmentation.ensemble_mode=[['0:2','min']]"])
