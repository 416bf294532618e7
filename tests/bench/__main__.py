"""`make bench`: run every benchmark, write tests/bench/results/latest.json and print a summary.

`python -m tests.bench bench_hotswap` runs only the named ones and updates their entries.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS = (
    "bench_extract",
    "bench_window_extract",
    "bench_train",
    "bench_validate",
    "bench_report",
    "bench_ui",
    "bench_chain",
    "bench_org_queues",
    "bench_hotswap",
    "bench_swap_load",
    "bench_store_swap",
    "bench_beat",
    "bench_model_options",
    "bench_window_inference",
    "bench_run_overhead",
)
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    only = [a for a in argv if not a.startswith("--")] or list(BENCHMARKS)
    report: dict[str, object] = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "quick": quick,
    }
    failed = False
    for name in only:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            module = importlib.import_module(f"tests.bench.{name}")
            result = module.run(quick=quick)
        except Exception:
            failed = True
            result = {"error": traceback.format_exc()}
        result["bench_seconds"] = round(time.perf_counter() - started, 1)
        report[name] = result
        print(json.dumps(result, indent=2, default=str), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("quick.json" if quick else "latest.json")
    if out.exists() and len(only) < len(BENCHMARKS):
        # A partial run updates its own entries and keeps the others' last results.
        report = {**json.loads(out.read_text()), **report}
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"results written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
