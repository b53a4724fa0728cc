"""The tooling that keeps the code in one shape: ruff's lint is clean over nisbflow/ and cli/, and mypy's errors only
go down. MYPY_ERRORS is a ratchet: the errors each module had when mypy joined the suite (2026-12-07, mostly region
slice tuples typed as three slices and report fields typed ``object``, which issue 38's region type and typed
reports remove). A module may have fewer, never more; a module not listed must have none. Lower a count when you
fix errors, and delete the entry at zero."""

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

MYPY_ERRORS = {
    "cli/app.py": 2,
    "cli/data.py": 1,
    "cli/pipeline.py": 1,
    "nisbflow/config/pytc.py": 1,
    "nisbflow/config/pytc_keys.py": 2,
    "nisbflow/config/schema.py": 2,
    "nisbflow/data/affinities.py": 2,
    "nisbflow/data/chunks.py": 1,
    "nisbflow/data/ngff.py": 4,
    "nisbflow/data/skeleton.py": 4,
    "nisbflow/data/volumes.py": 17,
    "nisbflow/decode/agglomerate.py": 4,
    "nisbflow/decode/agglomerate_blockwise.py": 2,
    "nisbflow/decode/cc_blockwise.py": 10,
    "nisbflow/decode/kernel.py": 1,
    "nisbflow/decode/stitch.py": 3,
    "nisbflow/file_outputs.py": 1,
    "nisbflow/infer/blockwise.py": 1,
    "nisbflow/infer/memory.py": 1,
    "nisbflow/infer/predict.py": 1,
    "nisbflow/jobs.py": 1,
    "nisbflow/model/checkpoint.py": 1,
    "nisbflow/model/network.py": 9,
    "nisbflow/model/reader.py": 1,
    "nisbflow/pipelines.py": 5,
    "nisbflow/synth/affinities.py": 2,
    "nisbflow/synth/volume.py": 11,
    "nisbflow/train/augment.py": 2,
    "nisbflow/train/dataset.py": 3,
    "nisbflow/view.py": 3,
}


def test_ruff_finds_nothing_in_the_library_and_the_command_line():
    result = subprocess.run([str(BIN / "ruff"), "check", "nisbflow", "cli"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


def test_mypy_errors_per_module_never_grow():
    result = subprocess.run([str(BIN / "mypy"), "--no-error-summary"], cwd=ROOT, capture_output=True, text=True)
    found = Counter(m.group(1) for m in re.finditer(r"^((?:nisbflow|cli)/\S+\.py):\d+: error:", result.stdout, re.M))
    grown = {module: (count, MYPY_ERRORS.get(module, 0)) for module, count in found.items()
             if count > MYPY_ERRORS.get(module, 0)}
    assert not grown, "mypy errors above the budget (found, budget): " + str(grown) + "\n" + result.stdout[-4000:]
    assert result.returncode in (0, 1), result.stderr[-2000:]  # 2: mypy itself failed (configuration, crash)
