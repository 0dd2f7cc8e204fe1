"""What every bench script shares: the ``--threads`` option and the line that names the
machine (CPU, cores, bf16 flags, threads, load average) printed beside the figures.

Importing this module is cheap: torch is imported only by ``apply_threads``.
"""

from __future__ import annotations

import argparse
import os
import platform

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def add_threads_option(parser: argparse.ArgumentParser, default: int | None = 1) -> None:
    """Add ``--threads N`` to ``parser``."""
    parser.add_argument("--threads", type=int, default=default, metavar="N",
                        help="torch threads (and OMP_NUM_THREADS of the processes it starts)")


def apply_threads(n: int) -> None:
    """Use ``n`` torch threads here, and in the processes started from now on."""
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def _cpuinfo() -> tuple[str | None, set[str]]:
    """The first CPU's model name and flags from /proc/cpuinfo (None and empty if absent)."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip() or None
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                if model is not None and flags:
                    break
    except OSError:
        pass
    return model, flags


def machine_line(threads: int) -> str:
    """One line: "2-core AMD EPYC (avx512_bf16), 1 torch thread(s), load average 0.42 0.51
    0.60" (the 1-, 5- and 15-minute load averages)."""
    model, flags = _cpuinfo()
    model = model or platform.processor() or "unknown CPU"
    found = [flag for flag in BF16_FLAGS if flag in flags]
    bf16 = ", ".join(found) if found else "no bf16 flags"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()}-core {model} ({bf16}), {threads} torch thread(s), "
            f"load average {load}")
