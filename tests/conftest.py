import os

import pytest

os.environ.setdefault("COLUMNS", "200")
"""Rich lays the command line's output out for this width: a long temporary path (pytest-xdist's ``popen-gw0``
folders) must not wrap a line the tests read. Set before the CLI's consoles are made."""

from nisbflow.synth import synthesize_seed


@pytest.fixture(scope="session")
def synthetic_seed(tmp_path_factory):
    """A small synthetic NISB seed on disk (64×64×32 voxels, 32³ zarr chunks) and its summary."""
    root = tmp_path_factory.mktemp("seed") / "seed7"
    summary = synthesize_seed(root, (64, 64, 32), seed=7, chunks=(32, 32, 32), progress=False)
    return root, summary


@pytest.fixture
def one_step_run(tmp_path):
    """A real training run of ``configs/tiny.yaml``: one step on two 48³ synthetic seeds (train/seed0, val/seed100)
    under ``tmp_path``; returns ``(run folder, trained model)``."""
    from nisbflow.config import load_config
    from nisbflow.train.loop import train

    for name, seed in (("train/seed0", 40), ("val/seed100", 41)):
        synthesize_seed(str(tmp_path / name), (48, 48, 48), seed=seed, chunks=(48, 48, 48), progress=False)
    config = load_config("configs/tiny.yaml", [f"data.train.path={tmp_path / 'train'}",
                                               f"data.val.path={tmp_path / 'val' / 'seed100'}",
                                               "data.patch_size=[32,32,32]", "optimization.max_steps=1",
                                               f"save_path={tmp_path}"])
    return train(config, run_dir=tmp_path / "run", workers=0)
