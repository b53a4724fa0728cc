"""Where block-wise decoding spends its time.

Decodes the 512³ noisy affinities of ``benchmarks/decode.py`` (built there, cached in ``BENCH_TMP``) zarr → zarr on
a LocalCluster of 2 workers × 1 thread, twice after a warm-up, and sums Dask's task stream per task prefix
(compute and transfer seconds, count, mean). Wall time minus the tasks' span is the client's share (fingerprints,
staging, numbering, publishing, scheduling).

    BENCH_TMP=/tmp/bench .venv/bin/python benchmarks/decode_profile.py
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def prefix_of(key) -> str:
    """A task key's name without its token (the hex parts)."""
    name = str(key[0] if isinstance(key, tuple) else key)
    return "-".join(p for p in name.split("-") if not (len(p) >= 16 and all(c in "0123456789abcdef" for c in p)))


def main() -> None:
    import distributed

    import decode as bench
    from nisbflow.cluster import cluster_client
    from nisbflow.decode import decode_to_zarr

    cache = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir())) / "nisbflow-decode-bench"
    cache.mkdir(parents=True, exist_ok=True)
    affinities = bench.noisy_affinity_store(cache, (512, 512, 512), 0.15)
    output = str(cache / "profile-seg.zarr")
    with cluster_client("local", n_workers=2, memory_limit="4GiB") as client:
        decode_to_zarr(affinities, output, thresholds=(0.75,), progress=False, overwrite=True)  # warm-up
        for _ in range(2):
            with distributed.get_task_stream(client) as stream:
                start = time.perf_counter()
                decode_to_zarr(affinities, output, thresholds=(0.75,), progress=False, overwrite=True)
                wall = time.perf_counter() - start
            totals = collections.defaultdict(lambda: [0, 0.0])
            for task in stream.data:
                for part in task["startstops"]:
                    entry = totals[(prefix_of(task["key"]), part["action"])]
                    entry[0] += 1
                    entry[1] += part["stop"] - part["start"]
            first = min(t["startstops"][0]["start"] for t in stream.data)
            last = max(t["startstops"][-1]["stop"] for t in stream.data)
            print(f"\nwall {wall:.2f} s, tasks span {last - first:.2f} s")
            print("| task | action | count | total (s) | mean (ms) |\n|---|---|---|---|---|")
            for (prefix, action), (count, seconds) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
                print(f"| {prefix} | {action} | {count} | {seconds:.2f} | {1000 * seconds / count:.1f} |")


if __name__ == "__main__":
    main()
