"""--device/--dtype resolution: bfloat16 only where the hardware multiplies in it."""

import pytest
import torch

import sgpt.core.device as device
import sgpt.core.training as training
from sgpt.core.device import fast_bfloat16, resolve_dtype, slow_bfloat16_note

CPU = torch.device("cpu")


def test_fast_bfloat16_is_what_the_cpu_reports():
    want = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert fast_bfloat16(CPU) == bool(want)
    assert resolve_dtype("auto", CPU) == torch.float32  # inference keeps float32 on CPUs


@pytest.mark.parametrize("fast", [True, False])
def test_auto_training_dtype_and_the_slow_bfloat16_note(monkeypatch, fast):
    monkeypatch.setattr(device, "fast_bfloat16", lambda d: fast)
    monkeypatch.setattr(training, "fast_bfloat16", lambda d: fast)
    assert training.training_dtype("auto", CPU) == (torch.bfloat16 if fast else None)
    assert training.training_dtype("bfloat16", CPU) == torch.bfloat16  # asked for: given
    note = slow_bfloat16_note(torch.bfloat16, CPU)
    assert (note is None) == fast
    if note:
        assert "tens of times slower than float32" in note and "--dtype auto" in note
    assert slow_bfloat16_note(None, CPU) is None
    assert slow_bfloat16_note(torch.float32, CPU) is None
