"""MfccEncoder: the dense-model contract, and parity with a plain numpy/scipy MFCC."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from sgpt.core.audio import load_audio
from sgpt.units import mfcc
from sgpt.units.mfcc import MfccEncoder


def reference_mfcc(wave: np.ndarray, cmvn: bool = True) -> np.ndarray:
    """The same definition, written out frame by frame in float64 (Kaldi's formulas)."""
    x = wave.astype(np.float64) * 32768
    n_frames = 1 + (len(x) - 400) // 320
    mel = lambda hz: 1127.0 * np.log(1.0 + hz / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(8000.0)
    step = (hi - lo) / 24
    banks = np.zeros((23, 257))
    for b in range(23):
        left, center, right = lo + b * step, lo + (b + 1) * step, lo + (b + 2) * step
        for i in range(256):  # Kaldi's banks stop below Nyquist
            m = mel(i * 16000 / 512)
            if left < m < right:
                banks[b, i] = (m - left) / (center - left) if m <= center else \
                    (right - m) / (right - center)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399)) ** 0.85
    lifter = 1 + 11 * np.sin(np.pi * np.arange(13) / 22)
    ceps = []
    for f in range(n_frames):
        frame = x[f * 320: f * 320 + 400].copy()
        frame -= frame.mean()
        for i in range(399, 0, -1):
            frame[i] -= 0.97 * frame[i - 1]
        frame[0] -= 0.97 * frame[0]
        power = np.abs(np.fft.rfft(frame * window, 512)) ** 2
        logmel = np.log(np.maximum(banks @ power, np.finfo(np.float32).eps))
        ceps.append(scipy.fft.dct(logmel, type=2, norm="ortho")[:13] * lifter)
    c = np.array(ceps)

    def delta(y):
        p = np.pad(y, ((2, 2), (0, 0)), mode="edge")
        return sum(n * (p[2 + n: 2 + n + len(y)] - p[2 - n: 2 - n + len(y)]) for n in (1, 2)) / 10

    feats = np.concatenate([c, delta(c), delta(delta(c))], axis=1)
    if cmvn:
        feats = (feats - feats.mean(0)) / np.sqrt(feats.var(0) + mfcc.VAR_FLOOR)
    return feats


@pytest.fixture(scope="module")
def waves(speech_dir) -> list[np.ndarray]:
    return [load_audio(speech_dir / f"s{i}.wav") for i in range(3)]


def encode(model, waves):
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    return model(batch, lengths)


def test_contract_attributes():
    m = MfccEncoder()
    assert (m.name, m.frame_rate, m.dim, m.layer, m.source) == ("mfcc", 50.0, 39, None, "mfcc")


@pytest.mark.parametrize("n_samples", [399, 400, 719, 720, 16000, 16001, 48123])
def test_frame_count_formula(n_samples):
    feats, n = MfccEncoder()(torch.randn(1, n_samples), torch.tensor([n_samples]))
    expected = max(0, 1 + (n_samples - 400) // 320)
    assert int(n[0]) == expected and feats.shape == (1, expected, 39)


def test_fifty_frames_per_second():
    model = MfccEncoder(cmvn=False)
    for seconds in (1, 10, 60):
        _, n = model(torch.zeros(1, seconds * 16000), torch.tensor([seconds * 16000]))
        assert int(n[0]) == 50 * seconds - 1  # the last 80 samples cannot hold a window
    # frame f covers samples 320 f .. 320 f + 400: a click at t s + 12.5 ms is in frame 50 t
    wave = torch.randn(1, 5 * 16000) * 1e-3
    clicks = [0.5, 1.22, 3.0, 4.5]
    for t in clicks:
        wave[0, int(t * 16000) + 200] = 0.9  # the centre of frame 50 t, in no other
    c0 = model(wave, torch.tensor([wave.shape[1]]))[0][0, :, 0]
    assert sorted(c0.topk(len(clicks)).indices.tolist()) == [round(t * 50) for t in clicks]


@pytest.mark.parametrize("cmvn", [True, False])
def test_padded_batch_equals_each_alone(waves, cmvn):
    model = MfccEncoder(cmvn=cmvn)
    feats, lengths = encode(model, waves)
    for i, w in enumerate(waves):
        alone, n = encode(model, [w])
        assert int(lengths[i]) == int(n[0]) == 1 + (len(w) - 400) // 320
        scale = 1.0 if cmvn else float(alone.abs().max())
        torch.testing.assert_close(feats[i, : n[0]], alone[0], atol=1e-5 * scale, rtol=1e-5)
        assert not feats[i, n[0]:].any()  # padded frames are zero


@pytest.mark.parametrize("cmvn", [True, False])
def test_parity_with_numpy_reference(waves, cmvn):
    wave = waves[0][: 16000 * 2]
    ours = encode(MfccEncoder(cmvn=cmvn), [wave])[0][0].double().numpy()
    ref = reference_mfcc(wave, cmvn)
    assert ours.shape == ref.shape
    scale = np.abs(ref).max(0)  # per-dim scale: raw c0 is in the hundreds, deltas near 1
    np.testing.assert_allclose(ours / scale, ref / scale, atol=2e-4)


def test_silence_and_tiny_input_are_finite():
    model = MfccEncoder()
    feats, n = model(torch.zeros(2, 8000), torch.tensor([8000, 400]))
    assert torch.isfinite(feats).all() and n.tolist() == [24, 1]
    feats, n = model(torch.zeros(1, 100), torch.tensor([100]))
    assert feats.shape == (1, 0, 39) and n.tolist() == [0]


def test_bfloat16_module_and_input_compute_in_float32(waves):
    wave = waves[1][:16000]
    ref = encode(MfccEncoder(), [wave])[0]
    model = MfccEncoder().to(torch.bfloat16)
    x = torch.from_numpy(wave)[None]
    feats, _ = model(x.to(torch.bfloat16), torch.tensor([len(wave)]))
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    # only the input's rounding to bfloat16 differs
    assert torch.corrcoef(torch.stack([feats.flatten(), ref.flatten()]))[0, 1] > 0.95
    torch.testing.assert_close(model(x, torch.tensor([len(wave)]))[0], ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(waves):
    cpu, n = encode(MfccEncoder(), waves)
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    gpu, gn = MfccEncoder().cuda()(batch.cuda(), lengths.cuda())
    assert gpu.is_cuda and gn.tolist() == n.tolist()
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)
