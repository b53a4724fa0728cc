"""The field's checkpoints: BANIS's and PyTorch Connectomics' Lightning checkpoints of MIC-DKFZ's MedNeXt.

The fixtures in tests/fixtures/peers were made once by make_fixtures.py there, with MIC-DKFZ's own MedNeXt code
(S, B and L, kernel 3 and 5, random weights trained two steps) saved by a real ``lightning.Trainer`` as BANIS and
PyTorch Connectomics save theirs, with the network's logits recorded on a fixed input; neither package is needed
here. nisbflow must give the same logits, read the architecture, window and threshold with their sources, and
refuse what does not fit in one line."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nisbflow.config.schema import ModelConfig
from nisbflow.model import Checkpoint, CheckpointError
from nisbflow.model.network import build
from nisbflow.model.peers import READ_AS

FIXTURES = Path(__file__).parent / "fixtures" / "peers"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
NISBFLOW = str(Path(sys.executable).with_name("nisbflow"))


def logits(network, recorded) -> np.ndarray:
    with torch.no_grad():
        return network(torch.from_numpy(recorded["input"])).numpy()


@pytest.mark.parametrize("case", sorted(MANIFEST))
def test_peer_checkpoints_give_mic_dkfzs_logits(case):
    made = MANIFEST[case]
    handle = Checkpoint.open(FIXTURES / made["checkpoint"])
    assert (handle.model.size, handle.model.kernel_size, handle.model.init_filters) == \
        (made["model_id"], made["kernel_size"], made["width"])
    network = handle.network("cpu")
    assert sum(p.numel() for p in network.parameters()) == made["parameters"] - 1  # MIC-DKFZ's dummy_tensor
    recorded = np.load(FIXTURES / case / "outputs.npz")
    expected = recorded["ema_logits"] if made["layout"] == "pytc" else recorded["logits"]  # PyTC: EMA by default
    np.testing.assert_allclose(logits(network, recorded), expected, rtol=1e-5, atol=1e-5)
    assert handle.metadata["weights"] == ("ema" if made["layout"] == "pytc" else "raw")


def test_mic_dkfz_architecture_at_full_width_and_monais_s_unchanged():
    """nisbflow's MedNeXt has MIC-DKFZ's parameter count (less its one-element dummy_tensor) for every variant and
    kernel at width 32; for S it is MONAI's create_mednext itself, tensor for tensor."""
    from monai.networks.nets.mednext import create_mednext

    counts = json.loads((FIXTURES / "parameters_at_width_32.json").read_text())
    for key, count in counts.items():
        size, kernel = key.split("_k")
        network = build(ModelConfig(size=size, kernel_size=int(kernel)))
        assert sum(p.numel() for p in network.parameters()) == count - 1, key
    ours = build(ModelConfig()).state_dict()
    monai = create_mednext("S", spatial_dims=3, in_channels=1, out_channels=6, kernel_size=3).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in monai.items()}


def test_banis_window_and_threshold_are_taken_with_their_sources(tmp_path):
    from nisbflow.settings import resolve_settings

    run = resolve_settings(FIXTURES / "banis_S_k3/last.ckpt")
    assert run.config.inference.window_size == (32, 32, 32)
    assert run.config.decoding.threshold == pytest.approx(0.7311)
    said = "\n".join(run.describe("infer"))
    assert "a BANIS Lightning checkpoint (MIC-DKFZ MedNeXt tensors under 'model.')" in said
    assert "decoding.threshold 0.7311 from best_thr_so_far['val']" in said
    assert "inference.window_size 32³ from hyper_parameters.small_size" in said
    # without best_thr_so_far, BANIS's best_thr_val.txt beside the file
    with torch.serialization.safe_globals(READ_AS):
        payload = torch.load(FIXTURES / "banis_S_k3/last.ckpt", weights_only=True)
    payload.pop("best_thr_so_far")
    torch.save(payload, tmp_path / "last.ckpt")
    (tmp_path / "best_thr_val.txt").write_text("0.65\n")
    again = resolve_settings(tmp_path / "last.ckpt")
    assert again.config.decoding.threshold == pytest.approx(0.65)
    assert f"decoding.threshold 0.65 from {tmp_path / 'best_thr_val.txt'}" in "\n".join(again.describe("infer"))
    # the compiled L's tensors under model._orig_mod.
    compiled = Checkpoint.open(FIXTURES / "banis_L_k5_compiled/last.ckpt")
    assert "under 'model._orig_mod.'" in compiled.metadata["notes"][0]


def test_a_checkpoint_that_does_not_fit_is_one_line_naming_what(tmp_path):
    with torch.serialization.safe_globals(READ_AS):
        payload = torch.load(FIXTURES / "banis_S_k3/last.ckpt", weights_only=True)
    lying = dict(payload, hyper_parameters=dict(payload["hyper_parameters"], model_id="L"))
    torch.save(lying, tmp_path / "lying.ckpt")
    with pytest.raises(CheckpointError, match=r"hyper_parameters.model_id is 'L', but the tensors are a MedNeXt-S"):
        Checkpoint.open(tmp_path / "lying.ckpt")
    state = dict(payload["state_dict"])
    state["model.enc_block_1.0.conv2.weight"] = torch.zeros((24, 8, 1, 1, 1))  # expansion 3, no variant has it
    torch.save(dict(payload, state_dict=state), tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match=r"block counts \[2, 2, 2, 2, 2, 2, 2, 2, 2\] and expansion ratios "
                                              r"\[2, 3, 2, 2, 2, 2, 2, 2, 2\] is none of MIC-DKFZ's S, B, M, L"):
        Checkpoint.open(tmp_path / "odd.ckpt")
    state = dict(payload["state_dict"])
    state["model.down_0.conv2.weight"] = torch.zeros((12, 4, 1, 1, 1))  # a wrong-size tensor in a known variant
    torch.save(dict(payload, state_dict=state), tmp_path / "wrong.ckpt")
    with pytest.raises(CheckpointError, match=r"its weights have other shapes \(down_blocks\.0\.conv2\.weight: "
                                              r"copying a param with shape torch.Size\(\[12, 4, 1, 1, 1\]\)"):
        Checkpoint.open(tmp_path / "wrong.ckpt")
    done = subprocess.run([NISBFLOW, "model", "import", str(tmp_path / "wrong.ckpt"), str(tmp_path / "x.pt")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "down_blocks.0" in done.stderr


def test_a_checkpoint_that_would_run_code_is_refused_unread(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    payload = {"state_dict": {}, "best_thr_so_far": Payload()}
    with open(tmp_path / "evil.ckpt", "wb") as handle:
        torch.save(payload, handle, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    done = subprocess.run([NISBFLOW, "model", "import", str(tmp_path / "evil.ckpt"), str(tmp_path / "x.pt")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "weights_only=True" in done.stderr
    assert "this must never run" not in done.stdout + done.stderr and not (tmp_path / "x.pt").exists()


def test_model_import_writes_a_nisbflow_checkpoint_of_the_chosen_weights(tmp_path):
    case = MANIFEST["pytc_L_k3_ema"]
    source = FIXTURES / case["checkpoint"]
    recorded = np.load(FIXTURES / "pytc_L_k3_ema" / "outputs.npz")
    for weights, key in (("raw", "logits"), ("ema", "ema_logits"), ("auto", "ema_logits")):
        output = tmp_path / f"{weights}.pt"
        done = subprocess.run([NISBFLOW, "model", "import", str(source), str(output), "--weights", weights],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        said = " ".join(done.stdout.split())
        assert f"wrote {output}" in said and "MedNeXt-L, kernel 3" in said
        imported = Checkpoint.open(output)
        assert imported.model.size == "L" and torch.load(output, weights_only=True)["format"] == "nisbflow-checkpoint"
        np.testing.assert_allclose(logits(imported.network("cpu"), recorded), recorded[key], rtol=1e-5, atol=1e-5)
        assert imported.metadata["imported_from"] == str(source) and imported.metadata["weights"] == \
            ("ema" if weights != "raw" else "raw")
    banis = tmp_path / "banis.pt"
    assert subprocess.run([NISBFLOW, "model", "import", str(FIXTURES / "banis_S_k3/last.ckpt"), str(banis)],
                          capture_output=True, timeout=120).returncode == 0
    from nisbflow.settings import resolve_settings

    run = resolve_settings(banis)  # what BANIS recorded travels with the import
    assert run.config.decoding.threshold == pytest.approx(0.7311) and run.config.inference.window_size == (32,) * 3
    refused = subprocess.run([NISBFLOW, "model", "import", str(FIXTURES / "banis_S_k3/last.ckpt"), str(banis)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "already exists" in refused.stderr


def _pytc_run(tmp_path, config: dict | None, tuned: dict) -> Path:
    """A PyTorch Connectomics run folder as its training and tuning write it: <run>/checkpoints/last.ckpt, the
    merged configuration <run>/config.yaml and tuning results best_params*.yaml."""
    import shutil

    import yaml

    run = tmp_path / "outputs" / "20261206_101500"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURES / MANIFEST["pytc_L_k3_ema"]["checkpoint"], run / "checkpoints" / "last.ckpt")
    if config is not None:
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    for name, threshold in tuned.items():
        (run / name).write_text(yaml.safe_dump({
            "best_trial": 7, "best_value": 0.61, "best_precision": 0.0, "best_recall": 0.0, "metric": "nerl",
            "decoding_function": "decode_affinity_cc", "decoding_params": {"threshold": threshold}}))
    return run / "checkpoints" / "last.ckpt"


def test_pytc_window_and_threshold_come_from_the_run_folder(tmp_path):
    from nisbflow.settings import resolve_settings

    config = {"model": {"arch": {"type": "mednext"}, "mednext": {"size": "L", "kernel_size": 3}},
              "data": {"dataloader": {"patch_size": [48, 64, 32]}},
              "inference": {"window": {"window_size": None, "overlap": 0.5}},
              "decoding": {"steps": [{"name": "decode_affinity_cc", "kwargs": {"threshold": 0.8}}]}}
    checkpoint = _pytc_run(tmp_path, config, {})
    run = resolve_settings(checkpoint)
    said = "\n".join(run.describe("infer"))
    assert run.config.inference.window_size == (48, 64, 32)  # window_size null: PyTC falls back on patch_size
    assert run.config.decoding.threshold == pytest.approx(0.8)
    folder = checkpoint.parent.parent
    assert f"inference.window_size [48, 64, 32] from {folder / 'config.yaml'} (data.dataloader.patch_size)" in said
    assert f"decoding.threshold 0.8 from {folder / 'config.yaml'} (decoding.steps decode_affinity_cc)" in said
    # a tuning result wins over the configuration's decoding step, as PyTC's test mode applies it
    config["inference"]["window"]["window_size"] = [32, 32, 32]
    tuned = _pytc_run(tmp_path / "b", config, {"best_params_raw_x1.yaml": 0.72})
    run = resolve_settings(tuned)
    assert run.config.decoding.threshold == pytest.approx(0.72) and run.config.inference.window_size == (32,) * 3
    assert "best_params_raw_x1.yaml (decoding_params, tuned by PyTorch Connectomics)" in "\n".join(
        run.describe("infer"))
    assert resolve_settings(tuned, overrides=["decoding.threshold=0.9"]).config.decoding.threshold == pytest.approx(0.9)
    # two tuning results that disagree, or a configuration of another network: refused in one line
    two = _pytc_run(tmp_path / "c", None, {"best_params_raw_x1.yaml": 0.72, "best_params.yaml": 0.85})
    with pytest.raises(CheckpointError, match=r"tuning results beside the checkpoint disagree .*0\.85.*0\.72.*move the others out"):
        Checkpoint.open(two)
    other = _pytc_run(tmp_path / "d", dict(config, model={"mednext": {"size": "S"}}), {})
    with pytest.raises(CheckpointError, match=r"config.yaml: model.mednext.size is 'S', but the checkpoint's tensors "
                                              r"are a MedNeXt-L with kernel 3; this configuration is another run's"):
        Checkpoint.open(other)
    bare = Checkpoint.open(_pytc_run(tmp_path / "e", None, {}))
    assert bare.recorded == {} and any(n.startswith("window and threshold: not found beside the checkpoint")
                                       for n in bare.metadata["notes"])


def test_one_reader_reads_a_peer_checkpoint_once_and_names_it_by_its_full_sha256(monkeypatch):
    """Checkpoint.open reads the file once, maps the peer's tensors once (the format dispatch is written once, in
    nisbflow.model.reader) and names the file by the full SHA-256 of its bytes."""
    import hashlib

    import nisbflow.model.peers as peers
    import nisbflow.model.reader as reader

    case = next(name for name, made in sorted(MANIFEST.items()) if made["layout"] == "pytc")
    path = FIXTURES / MANIFEST[case]["checkpoint"]
    reads, maps = [], []
    load_payload, read_peer = reader.load_payload, peers.read_peer
    monkeypatch.setattr(reader, "load_payload", lambda *a: reads.append(a) or load_payload(*a))
    monkeypatch.setattr(peers, "read_peer", lambda *a: maps.append(a) or read_peer(*a))
    handle = Checkpoint.open(path)
    assert (len(reads), len(maps)) == (1, 1)
    assert handle.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert reader.read_checkpoint(path).layout == "pytc" and handle.weights == "ema"


def test_a_hash_recorded_before_the_full_digest_still_names_its_checkpoint():
    from nisbflow.model.reader import same_hash

    digest = Checkpoint.open("nisb-tiny-synthetic").sha256
    assert same_hash(digest, digest) and same_hash(digest[:16], digest)
    assert not same_hash(digest[:12], digest) and not same_hash("0" * 16, digest) and not same_hash(None, digest)
