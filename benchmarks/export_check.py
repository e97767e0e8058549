"""Table of exported deploy bundles: accuracy fp32 vs int8, size, MACs, and a quick ORT latency.

    python benchmarks/export_check.py out/export/mbv1-dense out/export/mbv1-uniform50 \
        out/export/resnet20-dense --out benchmarks/results/export.json

Reads each folder's ``manifest.json`` (written by ``scripts/export.py``; the accuracies are the
export's own, measured in fresh ONNX Runtime sessions on the manifest's test images) and times
every file with ONNX Runtime on this machine's CPU: batch 1, one intra-op thread, ``--runs``
runs after 20 warm-up runs, median and 90th percentile. A sanity figure only; the deploy
benchmark (benchmarks/deploy.py) is the measurement. Also reports each bundle's int8 drop
(this host's kernels, and the exact int8 arithmetic) and exits 1 where the export's verdict
``checks.int8_within_bound`` (0.3 point, exact where measured) is false.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def latency_ms(path: Path, shape: list, runs: int) -> tuple[float, float]:
    import numpy as np

    from learners.onnx_export import session

    sess = session(path, threads=1)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal([1, *shape[1:]], dtype=np.float32)
    for _ in range(20):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(1000 * (time.perf_counter() - t))
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+", help="folders written by scripts/export.py")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--out", default="benchmarks/results/export.json")
    args = p.parse_args(argv)

    from learners.atomic import atomic_write_text
    from pf_deploy.benchmark import read_manifest
    from pf_deploy.export import INT8_MAX_DROP_POINTS

    rows, failures = [], []
    print(f"{'bundle':<28} {'model':<9} {'input':>7} {'MMACs':>8} {'params':>9} {'MB':>6} {'top-1 %':>8} "
          f"{'ms p50':>7} {'ms p90':>7}")
    for folder in map(Path, args.bundles):
        manifest = read_manifest(folder)
        shape = manifest["input"]["shape"]
        for m in manifest["models"]:
            p50, p90 = latency_ms(folder / m["file"], shape, args.runs)
            acc = m["test_accuracy"]
            rows.append({"bundle": str(folder), "input": shape[2], **m, "latency_ms_p50": p50, "latency_ms_p90": p90})
            label = f"{folder.parent.name}/{folder.name}" if folder.name == "imagenet-twin" else folder.name
            print(f"{label:<28} {m['name']:<9} {shape[2]:>4}px {m['macs'] / 1e6:8.1f} {m['params']:>9,} "
                  f"{m['size_bytes'] / 1e6:6.2f} {'n/a' if acc is None else f'{100 * acc:.2f}':>8} "
                  f"{p50:7.2f} {p90:7.2f}")
        checks = manifest.get("checks", {})
        if "int8_within_bound" in checks:  # the export's verdict: exact int8 arithmetic where measured
            drop = checks.get("int8_drop_points_exact", checks.get("int8_drop_points"))
            if not checks["int8_within_bound"]:
                failures.append(f"{folder}: int8 loses {drop:.2f} points")
            print(f"{'':<28} int8 drop: {checks.get('int8_drop_points', float('nan')):.2f} points with this host's "
                  f"kernels, {checks.get('int8_drop_points_exact', float('nan')):.2f} exact int8 arithmetic")
    result = {
        "command": "python benchmarks/export_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_1min": os.getloadavg()[0],
                    "note": "shared build machine; latency is a sanity figure (batch 1, 1 thread, median)"},
        "runs": args.runs, "rows": rows, "int8_bound_points": INT8_MAX_DROP_POINTS, "int8_bound_failures": failures,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}" + (f"; int8 bound exceeded: {failures}" if failures else "; int8 within bound"))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
