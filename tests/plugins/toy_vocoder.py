"""A toy vocoder architecture, plugged into sgpt through sgpt.vocode.architectures' table
alone: unit u is a sine at 100 + 20 u Hz for each of its frames (hop samples a frame)."""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from sgpt.core.errors import CheckpointError
from sgpt.vocode.architectures import config_path


class ToyVocoder(nn.Module):
    num_speakers = None
    has_duration_predictor = False
    context = 0  # each frame on its own: chunks join exactly

    def __init__(self, k: int, sample_rate: int, hop: int):
        super().__init__()
        self.k, self.sample_rate, self.hop = k, sample_rate, hop
        self.register_buffer("hz", 100 + 20 * torch.arange(k, dtype=torch.float32))

    @property
    def device(self) -> torch.device:
        return self.hz.device

    def predict_durations(self, units, lengths):
        raise CheckpointError("the toy vocoder has no duration predictor")

    def frames(self, units, lengths, durations=None, speaker=None):
        valid = torch.arange(units.shape[1], device=units.device) < lengths[:, None]
        durations = valid.long() if durations is None else durations * valid
        rows = [self.hz[u].repeat_interleave(d) for u, d in zip(units, durations)]
        x = nn.utils.rnn.pad_sequence(rows, batch_first=True)[:, None]
        return x, durations.sum(1)

    def decode(self, x, lengths):
        t = torch.arange(self.hop, device=x.device) / self.sample_rate
        wave = torch.sin(2 * math.pi * x[:, 0, :, None] * t).flatten(1)
        return wave, lengths * self.hop


def load(path, config, device, dtype) -> ToyVocoder:
    with open(config_path(path, config)) as f:
        cfg = json.load(f)
    return ToyVocoder(cfg["k"], cfg.get("sample_rate", 16_000), cfg.get("hop", 320)).to(device)
