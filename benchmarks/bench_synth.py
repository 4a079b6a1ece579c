"""Speed and peak memory of the synthetic generator, per scene, all four products.

Each case runs in a fresh Python process so that its peak RSS (``ru_maxrss``) belongs to
that case alone (it includes the interpreter and imported libraries, about 150-200 MB).
Two timings per case: ``make_scene`` (in memory) and ``synthesize`` of one scene (the same
plus writing the TIFFs and CSVs). Small cases report the median of several runs after a
warm-up run.

    .venv/bin/python benchmarks/bench_synth.py            # 512 x 512 and full size
    .venv/bin/python benchmarks/bench_synth.py --quick    # 512 x 512 only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CASES = {"512x512": (512, 512, 5), "full 3348x3392": (3348, 3392, 2)}


def child(height: int, width: int, repeats: int) -> None:
    """Run one case in this process and print one JSON line of figures."""
    import resource
    import statistics
    import tempfile
    import time

    from spectraseg.data.synth import make_scene, synthesize

    make_scene("6010_0_0", 256, 256, 0)  # warm-up: imports, first-touch allocations
    mem_times, disk_times = [], []
    for k in range(repeats):
        t0 = time.perf_counter()
        make_scene("6010_1_1", height, width, k, all_classes=True)
        mem_times.append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            synthesize(Path(tmp) / "d", 1, (height, width), seed=k, progress=False)
            disk_times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(
        json.dumps(
            {
                "make_scene_s": statistics.median(mem_times),
                "synthesize_s": statistics.median(disk_times),
                "peak_rss_mib": peak,
                "repeats": repeats,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 512 x 512 case")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    print(f"{'case':<16} {'make_scene s':>12} {'synthesize s':>12} {'peak RSS MiB':>12} runs")
    for name, (h, w, repeats) in CASES.items():
        if args.quick and h > 512:
            continue
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(h), str(w), str(repeats)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{name:<16} {r['make_scene_s']:>12.3f} {r['synthesize_s']:>12.3f} "
            f"{r['peak_rss_mib']:>12.0f} {r['repeats']:>4}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
