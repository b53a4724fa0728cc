"""benchmarks/gpu.py's forward step (issue 27, part 3) on the CPU path: each variant of the network against the
eager one on synthetic crops, as the GPU run checks it (max |Δ| after the sigmoid ≤ 2e-3, same partition at 0.75).

Channels-last 3-D is checked, not trusted: on the CPU, torch 2.13.0's GroupNorm gives wrong values for a
channels-last (2, 4, 128, 128, 128) input (4.2 at MedNeXt's first norm, 0.07 after the sigmoid), so the step must
report its difference rather than assume the layout changes nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_forward_variants_agree_with_the_eager_network_on_the_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--arch", "tiny", "--steps", "forward",
         "--forward-variants", "eager,compiled,channels-last", "--forward-batch", "2",
         "--work", str(tmp_path / "work"), "--json", str(tmp_path / "gpu.json")],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    forward = json.loads((tmp_path / "gpu.json").read_text())["forward"]
    assert set(forward) == {"eager", "compiled", "channels-last"}
    assert all(isinstance(entry, dict) and entry["windows_per_second"] > 0 for entry in forward.values()), forward
    assert forward["eager"]["max_abs_difference_to_eager"] == 0.0
    compiled = forward["compiled"]
    assert compiled["max_abs_difference_to_eager"] <= 2e-3 and compiled["same_partition_at_threshold"], compiled
    assert isinstance(forward["channels-last"]["max_abs_difference_to_eager"], float)
