"""--device and --dtype: resolved once, the same way in every tool."""

from __future__ import annotations

import platform

import torch

from sgpt.core.errors import SgptError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SgptError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SgptError(f"device {name!r} asked for, but this machine has no usable CUDA device")
    return device


def fast_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: CUDA devices that support
    it, CPUs with AVX512-BF16 or AMX (through oneDNN). Elsewhere PyTorch falls back to a
    reference kernel tens of times slower than float32 (40x on an AVX2-only EPYC)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's, else the platform's) and the bfloat16 matrix
    instructions it has, as in "AMD EPYC 9R14 (avx512_bf16)"."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    bf16 = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"{name} ({', '.join(bf16)})" if bf16 else name


def machine(device: torch.device) -> dict:
    """What a training run ran on, for its log: the device (a GPU's name), the CPU, the
    threads and the torch version."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"device": str(device), **({"gpu": gpu} if gpu else {}), "cpu": cpu_model(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def slow_bfloat16_note(dtype: torch.dtype | None, device: torch.device) -> str | None:
    """A note for users who ask for bfloat16 where it is emulated, else None."""
    if dtype != torch.bfloat16 or device.type != "cpu" or fast_bfloat16(device):
        return None
    return ("this CPU has no bfloat16 matrix instructions (AVX512-BF16 or AMX): bfloat16 "
            "runs tens of times slower than float32 here; --dtype auto picks float32")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA devices that support it, else float32."""
    if name == "auto":
        if device.type == "cuda" and fast_bfloat16(device):
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise SgptError(f"unknown dtype {name!r} (use auto, {', '.join(DTYPES)})")
    return DTYPES[name]
