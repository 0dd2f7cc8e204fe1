"""MFCC features: a weights-free dense encoder with the same contract as the HuBERT one.

Kaldi's MFCC recipe without dither: 25 ms frames (400 samples at 16 kHz) every 20 ms
(320 samples, so 50 frames/s, the rate of HuBERT units), only where a whole window fits
(``F = 1 + (T - 400) // 320``); per frame: DC offset removed, pre-emphasis 0.97, Povey window,
512-point power spectrum, 23 triangular mel filters (20 Hz to Nyquist), log, DCT-II to 13
cepstra (c0 kept), lifter 22. Samples are scaled to the int16 range first, as Kaldi reads
them, so its log floor (float32 epsilon) means the same. Deltas and delta-deltas (regression
over +-2 frames, applied twice) make 39 dims; the edge frames repeat at each utterance's own
end, so padding a batch never changes a feature.

Each utterance is then mean and variance normalized over its own frames (per-utterance CMVN):
k-means over raw MFCCs mostly clusters speakers and loudness, over normalized ones it
clusters sounds, so units are far more stable across voices. ``MfccEncoder(cmvn=False)``
gives the raw features.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sgpt.core.audio import SAMPLE_RATE

WINDOW = 400  # 25 ms
HOP = 320  # 20 ms: 50 frames/s
N_FFT = 512
N_MELS = 23
N_CEPS = 13
LIFTER = 22.0
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
DELTA_WINDOW = 2
LOG_FLOOR = torch.finfo(torch.float32).eps
VAR_FLOOR = 1.0  # speech varies by 5 to 3000 per dim here: only silence feels the floor


def frame_count(n_samples: Tensor) -> Tensor:
    """Frames in ``n_samples`` samples: ``1 + (T - 400) // 320``, 0 when no window fits."""
    return (torch.div(n_samples - WINDOW, HOP, rounding_mode="floor") + 1).clamp_min(0)


def mel_filterbank() -> Tensor:
    """Kaldi's triangular mel filters [N_MELS, N_FFT // 2 + 1], equally spaced in mel."""

    def mel(hz: Tensor | float) -> Tensor:
        return 1127.0 * torch.log1p(torch.as_tensor(hz, dtype=torch.float64) / 700.0)

    bins = mel(torch.arange(N_FFT // 2 + 1) * SAMPLE_RATE / N_FFT)
    low, high = mel(LOW_FREQ), mel(SAMPLE_RATE / 2)
    edges = low + torch.arange(N_MELS + 2) * (high - low) / (N_MELS + 1)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (bins - left) / (center - left)
    fall = (right - bins) / (right - center)
    return torch.minimum(rise, fall).clamp_min(0.0)


def cepstral_matrix() -> Tensor:
    """Orthonormal DCT-II from N_MELS log energies to N_CEPS cepstra, liftered: [N_MELS, N_CEPS]."""
    n = torch.arange(N_MELS, dtype=torch.float64)
    k = torch.arange(N_CEPS, dtype=torch.float64)[:, None]
    dct = torch.cos(math.pi / N_MELS * (n + 0.5) * k) * math.sqrt(2.0 / N_MELS)
    dct[0] /= math.sqrt(2.0)
    lifter = 1.0 + 0.5 * LIFTER * torch.sin(math.pi * k / LIFTER)
    return (lifter * dct).T


def deltas(x: Tensor, n_frames: Tensor) -> Tensor:
    """Regression deltas over +-DELTA_WINDOW frames of x [B, F, D]; row b ends at n_frames[b]."""
    t = torch.arange(x.shape[1], device=x.device)
    last = (n_frames - 1).clamp_min(0)[:, None]

    def shifted(k: int) -> Tensor:
        index = (t + k).clamp_min(0)[None].minimum(last)  # edge frames repeated, per row
        return x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))

    window = range(1, DELTA_WINDOW + 1)
    return sum(k * (shifted(k) - shifted(-k)) for k in window) / (2 * sum(k * k for k in window))


class MfccEncoder(nn.Module):
    """MFCC + deltas + delta-deltas (39 dims) at 50 frames/s, normalized per utterance.

    Computed in float32 on the device of the input, whatever dtype the module was cast to;
    features come back in float32. It holds no weights.
    """

    name = "mfcc"
    frame_rate = SAMPLE_RATE / HOP
    dim = 3 * N_CEPS
    layer = None
    source = "mfcc"

    def __init__(self, cmvn: bool = True):
        super().__init__()
        self.cmvn = cmvn
        # Plain attributes, not buffers: a cast to bfloat16 must not round these constants.
        self.window = torch.hann_window(WINDOW, periodic=False, dtype=torch.float64).pow(0.85)
        self.mel = mel_filterbank().T  # [N_FFT // 2 + 1, N_MELS]
        self.dct = cepstral_matrix()  # [N_MELS, N_CEPS]

    def forward(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """wavs [B, T] zero-padded, lengths [B] valid samples -> feats [B, F, 39], lengths [B].

        F is the frame count of T samples; frames past an utterance's own count are zero.
        """
        batch, n_samples = wavs.shape
        n_frames = frame_count(lengths.to(wavs.device).long())
        if n_samples < WINDOW:
            return wavs.new_zeros(batch, 0, self.dim, dtype=torch.float32), n_frames
        window, mel, dct = (c.to(wavs.device, torch.float32) for c in (self.window, self.mel,
                                                                       self.dct))

        frames = (wavs.float() * 32768.0).unfold(1, WINDOW, HOP)  # [B, F, WINDOW]
        frames = frames - frames.mean(-1, keepdim=True)
        frames = torch.cat([frames[..., :1] * (1.0 - PREEMPHASIS),
                            frames[..., 1:] - PREEMPHASIS * frames[..., :-1]], dim=-1)
        spectrum = torch.fft.rfft(frames * window, n=N_FFT)
        power = spectrum.real.square() + spectrum.imag.square()
        ceps = (power @ mel).clamp_min(LOG_FLOOR).log() @ dct  # [B, F, N_CEPS]

        delta = deltas(ceps, n_frames)
        feats = torch.cat([ceps, delta, deltas(delta, n_frames)], dim=-1)

        valid = (torch.arange(feats.shape[1], device=wavs.device) < n_frames[:, None])[..., None]
        if self.cmvn:
            count = n_frames.clamp_min(1)[:, None, None]
            mean = feats.masked_fill(~valid, 0.0).sum(1, keepdim=True) / count
            centered = (feats - mean).masked_fill(~valid, 0.0)
            var = centered.square().sum(1, keepdim=True) / count
            feats = centered * torch.rsqrt(var + VAR_FLOOR)
        return feats.masked_fill(~valid, 0.0), n_frames


def load(checkpoint: str | None, layer: int, device, dtype) -> MfccEncoder:
    """The ``mfcc`` entry of sgpt.units.encoders: no weights, so no checkpoint, no layer;
    computed in float32 whatever ``dtype``."""
    return MfccEncoder().to(device)
