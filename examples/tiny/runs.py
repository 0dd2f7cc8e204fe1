#!/usr/bin/env python3
"""What the recipe's training cost, and where: one line per training run under OUT (an
sgpt-train directory, with metrics.jsonl, or an sgpt-vocode train one, with
train_log.jsonl), then the total.

    python3 runs.py out                 # or: make -C examples/tiny runs OUT=out

Each trainer logs a "run" line each time it starts or resumes (when, the device, the CPU and
its bfloat16 instructions, threads, dtype) and the training seconds so far on each step's
line ("elapsed_s", carried over checkpoints). A run cut into chunks (LLM_SECONDS,
VOC_SECONDS) has one "run" line per chunk: this sums the time and names every machine.
Time spent on speech, units and evaluation is not training and is not counted; a log written
before these lines existed says "unknown" where it lacks them.
"""

import argparse
import json
import os
import sys

LOGS = {"metrics.jsonl": "llm", "train_log.jsonl": "vocoder"}


def read_log(path: str) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def summary(path: str) -> dict:
    """One run's steps, training seconds (None when its log does not say), chunks and
    machines."""
    records = read_log(path)
    runs = [r["run"] for r in records if isinstance(r.get("run"), dict)]
    steps = [r for r in records if "run" not in r and isinstance(r.get("step"), int)]
    elapsed = [r["elapsed_s"] for r in steps if isinstance(r.get("elapsed_s"), (int, float))]
    machines = []
    for run in runs:
        where = run.get("gpu") or run.get("cpu", "?")
        name = f"{where}, {run.get('threads', '?')} threads, {run.get('dtype', '?')}"
        if name not in machines:
            machines.append(name)
    return {"steps": max((r["step"] for r in steps), default=0),
            "seconds": max(elapsed) if elapsed else None, "chunks": len(runs),
            "started": runs[0].get("started") if runs else None, "machines": machines}


def find_runs(root: str) -> list[tuple[str, str]]:
    """(directory, kind) of every training log under ``root``, in path order."""
    found = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name, kind in LOGS.items():
            if name in files:
                found.append((os.path.join(d, name), kind))
    return found


def hours(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{seconds / 3600:.2f} h"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the recipe's output directory (OUT)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.out):
        p.error(f"{args.out}: not a directory")
    runs = find_runs(args.out)
    if not runs:
        print(f"runs.py: {args.out}: no training log (metrics.jsonl, train_log.jsonl)",
              file=sys.stderr)
        return 1
    total, known = 0.0, True
    for path, kind in runs:
        s = summary(path)
        where = os.path.relpath(os.path.dirname(path), args.out)
        parts = [where, kind, f"{s['steps']} steps", hours(s["seconds"])]
        if s["chunks"]:
            parts.append(f"{s['chunks']} chunk{'s' * (s['chunks'] != 1)} from {s['started']}")
        print("\t".join(parts))
        for m in s["machines"]:
            print(f"\ton {m}")
        if s["seconds"] is None:
            known = False
        else:
            total += s["seconds"]
    told = hours(total) if known or total else "unknown"
    print(f"total\t{len(runs)} runs\t{told}"
          + ("" if known else ", and runs whose logs do not say"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
