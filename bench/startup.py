"""sgpt-generate's start-up on the embedded default: cold (an empty sgpt cache: the GGUF base
is dequantized) against warm (the cache that the first start filled), side by side.

Each run is the user's command, ``echo '{"id":"x","text":"hi"}' | sgpt-generate --greedy
--max-new-tokens 1``, timed from start to exit (model loading and the first token). Cold
and warm runs alternate, so load from other processes falls on both alike; a cold run gets
a new empty cache, the warm runs share one filled before timing. Every run must print the
same answer (checked). Printed: the median of each and their ratio, and the machine line.
Runs use ``--threads`` torch threads (OMP_NUM_THREADS; default 2), as a user's would.

    .venv/bin/python bench/startup.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_threads_option, apply_threads, machine_line  # noqa: E402

BIN = Path(sys.executable).parent
QUESTION = '{"id":"x","text":"hi"}\n'


def child_env(cache: str) -> dict[str, str]:
    """sgpt-generate's environment: ours (with the OMP_NUM_THREADS that ``apply_threads``
    set), the cache ``cache``, offline, and no SGPT_DEFAULT."""
    env = {**os.environ, "SGPT_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    env.pop("SGPT_DEFAULT", None)
    return env


def run(cache: str) -> tuple[float, str]:
    env = child_env(cache)
    t0 = time.perf_counter()
    r = subprocess.run([str(BIN / "sgpt-generate"), "--greedy", "--max-new-tokens", "1"],
                       input=QUESTION, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"sgpt-generate failed: {r.stderr.strip()[-500:]}")
    return seconds, r.stdout


def prompt(cache: str) -> float:
    """Seconds from starting ``sgpt-generate -i`` on a terminal to its "> " prompt."""
    env = child_env(cache)
    master, slave = pty.openpty()
    t0 = time.perf_counter()
    p = subprocess.Popen([str(BIN / "sgpt-generate"), "-i", "--greedy"], stdin=slave,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    seen = b""
    while not seen.endswith(b"> "):
        if not select.select([p.stderr], [], [], 300)[0]:
            sys.exit("sgpt-generate -i showed no prompt in 5 minutes")
        chunk = os.read(p.stderr.fileno(), 4096)
        if not chunk:
            sys.exit(f"sgpt-generate -i ended before its prompt: {seen.decode()[-500:]}")
        seen += chunk
    seconds = time.perf_counter() - t0
    os.write(master, b"\n")  # an empty line ends the conversation
    p.wait()
    os.close(master)
    os.close(slave)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    add_threads_option(ap, default=2)  # the threads of the sgpt-generate runs timed
    args = ap.parse_args()
    apply_threads(args.threads)
    warm_cache = tempfile.mkdtemp(prefix="sgpt-bench-warm-")
    try:
        _, reference = run(warm_cache)  # fills the warm cache
        cold, warm, prompts = [], [], []
        for _ in range(args.repeats):
            cold_cache = tempfile.mkdtemp(prefix="sgpt-bench-cold-")
            try:
                seconds, out = run(cold_cache)
            finally:
                shutil.rmtree(cold_cache, ignore_errors=True)
            cold.append(seconds)
            assert out == reference, f"a cold start answered {out!r}, not {reference!r}"
            seconds, out = run(warm_cache)
            warm.append(seconds)
            assert out == reference, f"a warm start answered {out!r}, not {reference!r}"
            prompts.append(prompt(warm_cache))
    finally:
        shutil.rmtree(warm_cache, ignore_errors=True)
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"sgpt-generate --greedy --max-new-tokens 1, embedded default, {args.repeats} runs "
          f"each, medians: cold {c:.1f} s, warm {w:.1f} s ({c / w:.1f}x); same answer in "
          f"every run; warm -i to its prompt {statistics.median(prompts):.1f} s")
    print(machine_line(args.threads))


if __name__ == "__main__":
    main()
