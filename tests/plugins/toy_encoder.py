"""A toy dense encoder, plugged into sgpt through sgpt.units.encoders' table alone: the log
energy and zero-crossing rate of each 20 ms frame (2 dims, 50 frames/s)."""

from __future__ import annotations

import torch
from torch import nn

HOP = 320  # 20 ms at 16 kHz


class ToyEncoder(nn.Module):
    name = "toy"
    source = "toy"
    layer = None
    dim = 2
    frame_rate = 16_000 / HOP
    max_chunk = 16_000 * 4  # long audio in 4 s pieces

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor):
        frames = wavs.float()[:, : wavs.shape[1] // HOP * HOP].unflatten(1, (-1, HOP))
        energy = frames.square().mean(-1).clamp_min(1e-8).log()
        crossings = (frames[..., 1:].sign() != frames[..., :-1].sign()).float().mean(-1)
        feats = torch.stack([energy, 10 * crossings], -1)
        n = lengths // HOP
        valid = torch.arange(feats.shape[1], device=feats.device) < n[:, None]
        return feats.masked_fill(~valid[..., None], 0.0), n


def load(checkpoint, layer, device, dtype) -> ToyEncoder:
    return ToyEncoder().to(device)
