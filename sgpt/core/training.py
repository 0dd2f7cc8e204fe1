"""What every trainer shares (the LLM's sgpt-train, the vocoder's sgpt-vocode train): the one
rule for the training dtype, autocast, stopping on SIGINT/SIGTERM with a checkpoint, and the
metrics log a resumed run rewrites from its checkpoint on, with a line for each start.

A trainer's loop runs inside ``stop_requests``; after each update it reads the request once,
saves a checkpoint when one came, and raises ``Interrupted``; its tool reports that in one
line and exits 128 + the signal (130 for SIGINT, 143 for SIGTERM), and the same command
resumes from the checkpoint. A wall-time budget is ``timeout --signal=INT SECONDS`` around
the command (what examples/tiny's VOC_SECONDS and LLM_SECONDS do): the same path.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch

from sgpt.core.device import fast_bfloat16, machine
from sgpt.core.errors import SgptError


def training_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--dtype NAME`` for training (None: float32). ``auto`` is
    bfloat16 only where the hardware multiplies in it (CUDA with bf16, CPUs with AVX512-BF16
    or AMX): elsewhere it is emulated, tens of times slower than float32."""
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    if name == "float16":
        raise SgptError("--dtype float16 is not supported for training (use bfloat16 or "
                        "float32)")
    if name != "auto":
        raise SgptError(f"unknown dtype {name!r}")
    return torch.bfloat16 if fast_bfloat16(device) else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast to ``dtype`` on ``device``'s type; nothing when ``dtype`` is None."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def run_record(step: int, device: torch.device, dtype: torch.dtype | None, **extra) -> dict:
    """The log line a trainer writes each time it starts or resumes (at ``step``): when, on
    what machine, in which dtype. A run cut into chunks has one per chunk; with the steps'
    ``elapsed_s`` they say what the run cost and where (examples/tiny/runs.py sums them)."""
    return {"step": step, "run": {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **machine(device),
        "dtype": "float32" if dtype is None else str(dtype).removeprefix("torch."), **extra}}


def trim_log(path: str | os.PathLike, step: int) -> None:
    """Drop the JSONL lines of ``path`` past ``step`` (a resumed run logs those steps again),
    and lines that are not whole records."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(keep)


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint at ``steps``."""

    def __init__(self, signum: int, steps: int):
        super().__init__(f"{signal.Signals(signum).name} at step {steps}")
        self.signum, self.steps = signum, steps


@contextmanager
def stop_requests(info: Callable[[str], None]):
    """While active, SIGINT and SIGTERM ask the loop to stop (the list holds the signal
    number) instead of killing it mid-update; a second one aborts at once, as before."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        info(f"{signal.Signals(signum).name}: finishing the current update to save a "
             "checkpoint (send it again to abort without saving)")

    # a signal the parent set to be ignored (nohup, a shell's background job) stays ignored
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interrupted_note(e: Interrupted, output: str) -> str:
    """The line a tool prints when training stopped on a signal."""
    return (f"interrupted by {signal.Signals(e.signum).name}: checkpoint of step {e.steps} "
            f"saved in {output}; run the same command again to resume")
