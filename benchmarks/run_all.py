"""Run every benchmark in turn on a quiet machine and print one JSON object per benchmark.

Usage: python benchmarks/run_all.py [NAME ...] [--out FILE.jsonl]
Each benchmark prints its figures as one JSON object on its last line (the benchmarks' contract, BENCHMARKS.md);
this collects them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ORDER = ("train_step", "train_loop", "sampler", "data_pipeline", "fit", "symmetry")


def run_one(name: str, extra: list[str]) -> dict:
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(HERE / f"{name}.py"), *extra], capture_output=True, text=True, cwd=HERE.parent
    )
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}
    result["benchmark"] = name
    result["wall_s_total"] = round(time.time() - start, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=list(ORDER))
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    for name in args.names:
        result = run_one(name, [])
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
