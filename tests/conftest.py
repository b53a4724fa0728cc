import pytest

from nisbflow.synth import synthesize_seed


@pytest.fixture(scope="session")
def synthetic_seed(tmp_path_factory):
    """A small synthetic NISB seed on disk (64×64×32 voxels, 32³ zarr chunks) and its summary."""
    root = tmp_path_factory.mktemp("seed") / "seed7"
    summary = synthesize_seed(root, (64, 64, 32), seed=7, chunks=(32, 32, 32), progress=False)
    return root, summary
