"""Unit HiFi-GAN: discrete speech units back to a 16 kHz waveform.

The generator of speech-resynthesis / fairseq (``CodeGenerator`` with a duration predictor,
Polyak et al. 2021, Lee et al. 2021), written to load the published checkpoints exactly:

* ``g_XXXXXXXX``: ``{"generator": state_dict}`` with weight-norm parameters
  (``weight_g``, ``weight_v``), read with ``torch.load(weights_only=True)``;
* ``config.json``: the hyper-parameters (``upsample_rates``, ``resblock_kernel_sizes``,
  ``num_embeddings``, ``dur_predictor_params``, ``multispkr``, ...).

Units are embedded (``dict``), optionally repeated by their durations (given, or predicted
by ``dur_predictor``), concatenated with a speaker embedding (``spkr``), then upsampled by
transposed convolutions, each followed by multi-receptive-field residual blocks, to one
sample per ``prod(upsample_rates)``-th of a frame.

Batches: every convolution's output is masked beyond each utterance's own length, so each
utterance of a padded batch sees exactly the zeros it would see alone, and the result is
that of vocoding it on its own.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from sgpt.core.errors import CheckpointError, first_line
from sgpt.vocode.architectures import VOCODER_FORMAT

LRELU_SLOPE = 0.1

# The published mHuBERT (layer 11, k-means 1000) unit vocoder's config.json, as released with
# unit_hifigan_mhubert_vp_en_es_fr_it3_400k_layer11_km1000_lj_dur (speech-resynthesis keys;
# the training knobs are used by `sgpt-vocode train`).
MHUBERT_KM1000_CONFIG: dict = {
    "resblock": "1",
    "num_gpus": 0,
    "batch_size": 16,
    "learning_rate": 0.0002,
    "adam_b1": 0.8,
    "adam_b2": 0.99,
    "lr_decay": 0.999,
    "seed": 1234,
    "upsample_rates": [5, 4, 4, 2, 2],
    "upsample_kernel_sizes": [11, 8, 8, 4, 4],
    "upsample_initial_channel": 512,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "num_embeddings": 1000,
    "embedding_dim": 128,
    "model_in_dim": 128,
    "segment_size": 8960,
    "code_hop_size": 320,
    "f0": False,
    "num_mels": 80,
    "num_freq": 1025,
    "n_fft": 1024,
    "hop_size": 256,
    "win_size": 1024,
    "dur_prediction_weight": 1.0,
    "dur_predictor_params": {
        "encoder_embed_dim": 128,
        "var_pred_hidden_dim": 128,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
    "sampling_rate": 16000,
    "fmin": 0,
    "fmax": 8000,
    "fmax_for_loss": None,
    "num_workers": 4,
    "dist_config": {"dist_backend": "nccl", "dist_url": "env://"},
}

# Keys that ask for inputs or modules this implementation does not have.
_UNSUPPORTED = {
    "embedder_params": "a speaker-embedder input vector per utterance (embedder_params)",
    "lambda_commit_code": "a VQ-VAE code encoder (lambda_commit_code)",
    "code_vq_params": "a VQ-VAE code encoder (code_vq_params)",
    "f0_quantizer_path": "a quantized F0 input (f0_quantizer_path)",
    "lambda_commit": "an F0 VQ-VAE (lambda_commit)",
}


# ---------------------------------------------------------------------------------------------
# Config


@dataclass
class DurationPredictorConfig:
    encoder_embed_dim: int = 128
    var_pred_hidden_dim: int = 128
    var_pred_kernel_size: int = 3
    var_pred_dropout: float = 0.5

    def check(self, bad: Callable[[str], None]) -> None:
        """``bad(reason)`` for a setting of the wrong kind, named by its key."""
        for name in ("encoder_embed_dim", "var_pred_hidden_dim", "var_pred_kernel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(f"'dur_predictor_params.{name}' must be a positive integer")
        p = self.var_pred_dropout
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
            bad("'dur_predictor_params.var_pred_dropout' must be a number from 0 to 1")
        if self.var_pred_kernel_size % 2 == 0:
            bad("dur_predictor_params.var_pred_kernel_size must be odd")


@dataclass
class HiFiGANConfig:
    """The generator's shape; ``extra`` keeps every other key of config.json (training
    knobs, data paths) so that writing the config back loses nothing."""

    upsample_rates: list[int]
    upsample_kernel_sizes: list[int]
    upsample_initial_channel: int
    resblock_kernel_sizes: list[int]
    resblock_dilation_sizes: list[list[int]]
    num_embeddings: int
    embedding_dim: int
    model_in_dim: int = 80  # fairseq's default when the key is absent
    resblock: str = "1"
    dur_predictor_params: DurationPredictorConfig | None = None
    multispkr: bool | str = False  # speech-resynthesis also writes a method name here
    num_speakers: int = 200
    sampling_rate: int = 16000
    extra: dict = field(default_factory=dict)
    # the keys config.json had: defaults it did not spell out are not written back
    given: frozenset = field(default_factory=frozenset, compare=False, repr=False)

    REQUIRED = ("upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel",
                "resblock_kernel_sizes", "resblock_dilation_sizes", "num_embeddings",
                "embedding_dim")

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> HiFiGANConfig:
        """Parse (and check) a published-style config dict; CheckpointError names ``where``."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{where}: a vocoder config must be a JSON object")
        missing = [k for k in cls.REQUIRED if d.get(k) is None]  # null is no value either
        if missing:
            raise CheckpointError(f"{where}: missing field(s) {', '.join(missing)}")
        if d.get("f0"):
            raise CheckpointError(f"{where}: this vocoder is conditioned on F0 ('f0': true), "
                                  "which needs an F0 contour per utterance; sgpt-vocode takes "
                                  "units (and durations, a speaker) only")
        for key, what in _UNSUPPORTED.items():
            if d.get(key):
                raise CheckpointError(f"{where}: this vocoder needs {what}, which sgpt-vocode "
                                      "does not support")
        names = {f.name for f in fields(cls)} - {"extra", "given"}
        kwargs = {k: d[k] for k in names if k in d and d[k] is not None}
        if "dur_predictor_params" in kwargs:
            try:
                kwargs["dur_predictor_params"] = DurationPredictorConfig(
                    **kwargs["dur_predictor_params"])
            except TypeError as e:
                raise CheckpointError(f"{where}: bad dur_predictor_params ({e})") from None
        kwargs["multispkr"] = d.get("multispkr") or False
        cfg = cls(**kwargs, extra={k: v for k, v in d.items() if k not in names},
                  given=frozenset(d))
        cfg.check(where)
        return cfg

    def to_dict(self) -> dict:
        """The config.json dict (published key names; extra keys kept)."""
        d = {**self.extra}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("extra", "given") or (
                    f.name not in self.given and f.name not in self.REQUIRED
                    and value == f.default):
                continue
            if f.name == "dur_predictor_params":
                if value is None:
                    continue
                value = asdict(value)
            d[f.name] = value
        d["resblock_dilation_sizes"] = [list(x) for x in self.resblock_dilation_sizes]
        return d

    def check(self, where: str) -> None:
        """CheckpointError naming ``where`` unless the config describes a generator."""
        def bad(reason: str):
            raise CheckpointError(f"{where}: {reason}")

        self._check_stack(bad)
        self._check_sizes(bad)

    def _check_stack(self, bad: Callable[[str], None]) -> None:
        """The upsampling and residual blocks."""
        def ints(name, value, minimum=1):
            if not (isinstance(value, list) and value and all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= minimum
                    for v in value)):
                bad(f"'{name}' must be a non-empty list of integers >= {minimum}")

        ints("upsample_rates", self.upsample_rates)
        ints("upsample_kernel_sizes", self.upsample_kernel_sizes)
        ints("resblock_kernel_sizes", self.resblock_kernel_sizes)
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            bad("'upsample_rates' and 'upsample_kernel_sizes' differ in length")
        if not isinstance(self.resblock_dilation_sizes, list) or len(
                self.resblock_dilation_sizes) != len(self.resblock_kernel_sizes):
            bad("'resblock_dilation_sizes' needs one list per resblock kernel size")
        for d in self.resblock_dilation_sizes:
            ints("resblock_dilation_sizes", d)
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if k < u:
                bad(f"upsample kernel {k} is smaller than its rate {u}")
        self.resblock = str(self.resblock)
        if self.resblock not in ("1", "2"):
            bad(f"'resblock' must be \"1\" or \"2\", not {self.resblock!r}")
        if self.resblock == "1" and any(len(d) != 3 for d in self.resblock_dilation_sizes):
            bad("resblock \"1\" needs 3 dilations per kernel")

    def _check_sizes(self, bad: Callable[[str], None]) -> None:
        """Channel counts, the units' input width, the duration predictor's."""
        for name in ("upsample_initial_channel", "num_embeddings", "embedding_dim",
                     "model_in_dim", "num_speakers", "sampling_rate"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(f"'{name}' must be a positive integer")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            bad("'upsample_initial_channel' must halve evenly at every upsampling")
        want = self.embedding_dim * (2 if self.multispkr else 1)
        if self.model_in_dim != want:
            bad(f"model_in_dim {self.model_in_dim} (80 when absent, as in fairseq) does not "
                f"match the input the units give (embedding_dim {self.embedding_dim}"
                + (" + a speaker embedding" if self.multispkr else "") + f" = {want})")
        dp = self.dur_predictor_params
        if dp is not None:
            dp.check(bad)
            if dp.encoder_embed_dim != self.embedding_dim:
                bad(f"dur_predictor_params.encoder_embed_dim {dp.encoder_embed_dim} != "
                    f"embedding_dim {self.embedding_dim}")

    @property
    def hop(self) -> int:
        """Samples per input frame."""
        return math.prod(self.upsample_rates)

    @property
    def exact_hop(self) -> bool:
        """Whether every upsampling gives exactly ``rate`` samples per input sample."""
        return all((k - u) % 2 == 0 for u, k in
                   zip(self.upsample_rates, self.upsample_kernel_sizes))

    def receptive_field(self) -> int:
        """Input frames on either side that can change one output sample (an upper bound)."""
        reach = 3.0  # conv_pre, kernel 7
        rate = 1
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            reach += math.ceil(k / u) / rate
            rate *= u
            per_block = []
            for kr, dils in zip(self.resblock_kernel_sizes, self.resblock_dilation_sizes):
                steps = sum((kr - 1) * d // 2 for d in dils)
                if self.resblock == "1":
                    steps += len(dils) * (kr - 1) // 2
                per_block.append(steps)
            reach += max(per_block) / rate
        reach += 3 / rate  # conv_post, kernel 7
        return math.ceil(reach) + 1


# ---------------------------------------------------------------------------------------------
# Weight-normalised convolutions, stored as the published checkpoints store them


class _WeightNorm:
    """``weight = weight_g * weight_v / ||weight_v||`` (norm over all dims but the first), the
    parametrisation of ``torch.nn.utils.weight_norm`` and the ``weight_g``/``weight_v`` keys
    of its state dict. ``fold()`` computes the weight once, for inference. ``init_std``: the
    normal init of speech-resynthesis's ``init_weights``, applied before the split."""

    def __init__(self, *args, init_std: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if init_std is not None:
            nn.init.normal_(self.weight, 0.0, init_std)
        w = self.weight.detach()
        del self.weight
        dims = tuple(range(1, w.dim()))
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(w, dim=dims, keepdim=True))
        self.weight_v = nn.Parameter(w.clone())
        self.register_buffer("folded", None, persistent=False)

    def normed_weight(self) -> torch.Tensor:
        if self.folded is not None:
            return self.folded
        v = self.weight_v
        norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
        return v * (self.weight_g / norm)

    def fold(self) -> None:
        with torch.no_grad():
            self.folded = self.normed_weight().detach().clone()

    def unfold(self) -> None:
        self.folded = None


class WNConv1d(_WeightNorm, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normed_weight(), self.bias)


class WNConv2d(_WeightNorm, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normed_weight(), self.bias)


class WNConvTranspose1d(_WeightNorm, nn.ConvTranspose1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.normed_weight(), self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)

    def out_length(self, length: torch.Tensor) -> torch.Tensor:
        return ((length - 1) * self.stride[0] - 2 * self.padding[0]
                + self.dilation[0] * (self.kernel_size[0] - 1) + 1)


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class Padding:
    """Zeroes what lies beyond each item's own length in a padded batch [B, C, T].

    At inference the padded tails are zeroed in place (a write proportional to the padding);
    a multiply by a 0/1 mask over the whole batch cost a third of the generator's time on a
    CPU. With autograd on, it multiplies (no in-place change to a tensor backward needs).
    """

    def __init__(self, lengths: torch.Tensor, total: int):
        self.lengths, self.total = lengths, total
        self.tails = [(i, n) for i, n in enumerate(lengths.tolist()) if n < total]
        self.mask: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            if self.mask is None:
                self.mask = length_mask(self.lengths, self.total, x.dtype)
            return x * self.mask
        for i, n in self.tails:
            x[i, :, n:] = 0
        return x


def padding(lengths: torch.Tensor, total: int) -> Padding | None:
    """A Padding for items of ``lengths`` padded to ``total``; None when none is padded."""
    return None if bool((lengths >= total).all()) else Padding(lengths, total)


def _masked(x: torch.Tensor, mask: torch.Tensor | Padding | None) -> torch.Tensor:
    if mask is None:
        return x
    return x * mask if isinstance(mask, torch.Tensor) else mask(x)


def length_mask(lengths: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor | None:
    """[B, 1, total]: 1 inside each item's length, 0 beyond; None when nothing is padded."""
    if bool((lengths >= total).all()):
        return None
    positions = torch.arange(total, device=lengths.device)
    return (positions[None, :] < lengths[:, None]).to(dtype)[:, None, :]


# ---------------------------------------------------------------------------------------------
# The generator


class ResBlock1(nn.Module):
    """Three dilated convolutions, each followed by an undilated one, with residuals."""

    def __init__(self, channels: int, kernel_size: int, dilation: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, 1, dilation=d,
                     padding=get_padding(kernel_size, d), init_std=0.01) for d in dilation)
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, 1, dilation=1,
                     padding=get_padding(kernel_size, 1), init_std=0.01) for _ in dilation)

    def forward(self, x: torch.Tensor, mask: Padding | None = None) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = _masked(c1(F.leaky_relu(x, LRELU_SLOPE)), mask)
            xt = _masked(c2(F.leaky_relu(xt, LRELU_SLOPE)), mask)
            x = xt + x
        return x


class ResBlock2(nn.Module):
    """Dilated convolutions with residuals (speech-resynthesis ``resblock: "2"``)."""

    def __init__(self, channels: int, kernel_size: int, dilation: list[int]):
        super().__init__()
        self.convs = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, 1, dilation=d,
                     padding=get_padding(kernel_size, d), init_std=0.01) for d in dilation)

    def forward(self, x: torch.Tensor, mask: Padding | None = None) -> torch.Tensor:
        for c in self.convs:
            x = _masked(c(F.leaky_relu(x, LRELU_SLOPE)), mask) + x
        return x


class DurationPredictor(nn.Module):
    """fastspeech2's VariancePredictor: log(duration + 1) of each (deduplicated) unit."""

    def __init__(self, cfg: DurationPredictorConfig):
        super().__init__()
        k, h = cfg.var_pred_kernel_size, cfg.var_pred_hidden_dim
        self.conv1 = nn.Sequential(nn.Conv1d(cfg.encoder_embed_dim, h, k, padding=(k - 1) // 2),
                                   nn.ReLU())
        self.ln1 = nn.LayerNorm(h)
        self.conv2 = nn.Sequential(nn.Conv1d(h, h, k, padding=(k - 1) // 2), nn.ReLU())
        self.ln2 = nn.LayerNorm(h)
        self.proj = nn.Linear(h, 1)
        self.dropout = cfg.var_pred_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, T, C] unit embeddings (zero beyond each length); mask: [B, T, 1]."""
        x = self.conv1(x.transpose(1, 2)).transpose(1, 2)
        x = _masked(F.dropout(self.ln1(x), self.dropout, self.training), mask)
        x = self.conv2(x.transpose(1, 2)).transpose(1, 2)
        x = F.dropout(self.ln2(x), self.dropout, self.training)
        return self.proj(x).squeeze(2)


def durations_from_log(log_dur: torch.Tensor) -> torch.Tensor:
    """Frames per unit from predicted log(duration + 1): rounded, at least 1."""
    return torch.clamp(torch.round(torch.exp(log_dur) - 1).long(), min=1)


class UnitHiFiGAN(nn.Module):
    """The unit HiFi-GAN generator; parameter names are those of the published checkpoints."""

    def __init__(self, cfg: HiFiGANConfig):
        super().__init__()
        self.cfg = cfg
        self.dict = nn.Embedding(cfg.num_embeddings, cfg.embedding_dim)
        self.spkr = (nn.Embedding(cfg.num_speakers, cfg.embedding_dim) if cfg.multispkr
                     else None)
        self.dur_predictor = (DurationPredictor(cfg.dur_predictor_params)
                              if cfg.dur_predictor_params is not None else None)
        channels = cfg.upsample_initial_channel
        self.conv_pre = WNConv1d(cfg.model_in_dim, channels, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            WNConvTranspose1d(channels // 2 ** i, channels // 2 ** (i + 1), k, u,
                              padding=(k - u) // 2, init_std=0.01)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)))
        block = ResBlock1 if cfg.resblock == "1" else ResBlock2
        self.resblocks = nn.ModuleList(
            block(channels // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        self.conv_post = WNConv1d(channels // 2 ** len(self.ups), 1, 7, 1, padding=3,
                                  init_std=0.01)
        self.num_kernels = len(cfg.resblock_kernel_sizes)

    # -- what sgpt-vocode needs of a vocoder (sgpt.vocode.architectures) ---------------------

    @property
    def k(self) -> int:
        return self.cfg.num_embeddings

    @property
    def sample_rate(self) -> int:
        return self.cfg.sampling_rate

    @property
    def hop(self) -> int:
        return self.cfg.hop

    @property
    def num_speakers(self) -> int | None:
        return self.cfg.num_speakers if self.cfg.multispkr else None

    @property
    def has_duration_predictor(self) -> bool:
        return self.dur_predictor is not None

    @property
    def context(self) -> int | None:
        return self.cfg.receptive_field() if self.cfg.exact_hop else None

    @property
    def device(self) -> torch.device:
        return self.dict.weight.device

    # -- units -> frames ----------------------------------------------------------------------

    def predict_durations(self, units: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, U] units (padded) -> [B, U] frames per unit (0 beyond each length)."""
        if self.dur_predictor is None:
            raise CheckpointError("this vocoder has no duration predictor")
        valid = torch.arange(units.shape[1], device=units.device)[None, :] < lengths[:, None]
        mask = valid[:, :, None].to(self.dict.weight.dtype)
        log_dur = self.dur_predictor(self.dict(units) * mask, mask)
        return durations_from_log(log_dur) * valid

    def frames(self, units: torch.Tensor, lengths: torch.Tensor,
               durations: torch.Tensor | None = None,
               speaker: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning frames [B, model_in_dim, T] and their lengths [B].

        units [B, U] (padded with any valid id), lengths [B]; durations [B, U] (0 beyond
        each length) repeat each unit's embedding, else one frame per unit; speaker [B].
        """
        x = self.dict(units)  # B U C
        if durations is not None:
            lengths = durations.sum(1)
            flat = torch.repeat_interleave(x.reshape(-1, x.shape[-1]), durations.reshape(-1),
                                           dim=0)
            x = nn.utils.rnn.pad_sequence(list(flat.split(lengths.tolist())), batch_first=True)
        x = x.transpose(1, 2)  # B C T
        if self.spkr is not None:
            if speaker is None:
                raise ValueError("a multi-speaker vocoder needs a speaker id")
            x = torch.cat([x, self.spkr(speaker)[:, :, None].expand(-1, -1, x.shape[-1])], 1)
        mask = length_mask(lengths, x.shape[-1], x.dtype)
        return _masked(x, mask), lengths

    # -- frames -> waveform -------------------------------------------------------------------

    def decode(self, x: torch.Tensor, lengths: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, C, T] (zero beyond each length) -> waveforms [B, N] and lengths [B]."""
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[-1], device=x.device)
        mask = padding(lengths, x.shape[-1])
        x = _masked(self.conv_pre(x), mask)
        for i, up in enumerate(self.ups):
            x = F.leaky_relu(x, LRELU_SLOPE)
            x = up(x)
            lengths = up.out_length(lengths)
            mask = padding(lengths, x.shape[-1])
            x = _masked(x, mask)
            xs = None
            for j in range(self.num_kernels):
                y = self.resblocks[i * self.num_kernels + j](x, mask)
                xs = y if xs is None else xs + y
            x = xs / self.num_kernels
        x = F.leaky_relu(x)  # slope 0.01, as in the reference
        x = torch.tanh(self.conv_post(x))
        return x[:, 0], lengths

    def forward(self, units: torch.Tensor, lengths: torch.Tensor | None = None,
                durations: torch.Tensor | None = None, speaker: torch.Tensor | None = None,
                predict_durations: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Units [B, U] -> waveforms [B, N] (padded) and their lengths [B]."""
        if lengths is None:
            lengths = torch.full((units.shape[0],), units.shape[1], device=units.device)
        if predict_durations:
            durations = self.predict_durations(units, lengths)
        x, frame_lengths = self.frames(units, lengths, durations, speaker)
        return self.decode(x, frame_lengths)

    def fold_weight_norm(self) -> UnitHiFiGAN:
        """Compute every weight-normalised weight once (inference)."""
        for m in self.modules():
            if isinstance(m, _WeightNorm):
                m.fold()
        return self


# ---------------------------------------------------------------------------------------------
# Loading the published layout

_G_FILE = re.compile(r"^g_(\d+)$")


def read_config(path: str) -> HiFiGANConfig:
    return HiFiGANConfig.from_dict(read_config_dict(path), path)


def read_config_dict(path: str) -> dict:
    """A vocoder's config.json as it is, less its format and version (checked: they are the
    file's, not the config's); CheckpointError naming the file if unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not JSON (nested too deep)") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise CheckpointError(f"{path}: not JSON ({first_line(e)})") from None
    if isinstance(d, dict):
        VOCODER_FORMAT.check(path, d)
        if "format" in d:
            d = {k: v for k, v in d.items() if k not in VOCODER_FORMAT.stamp()}
    return d


def latest_checkpoint(directory: str, prefix: str = "g_", suffix: str = "") -> str | None:
    """The highest-numbered ``PREFIX########SUFFIX`` file of a directory, or None."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(directory), prefix + "*")):
        m = re.fullmatch(re.escape(prefix) + r"(\d+)" + re.escape(suffix),
                         os.path.basename(path))
        if m and os.path.isfile(path):
            found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


def find_vocoder(path: str, config: str | None = None) -> tuple[str, str]:
    """(generator file, config file) for ``--vocoder DIR_OR_G_FILE [--config FILE]``."""
    if os.path.isdir(path):
        g_file = latest_checkpoint(path)
        if g_file is None:
            raise CheckpointError(f"{path}: no g_XXXXXXXX generator checkpoint in directory")
        return g_file, config or os.path.join(path, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    return path, config or os.path.join(os.path.dirname(path) or ".", "config.json")


def torch_load(path: str) -> dict:
    """A weights-only torch file (never runs code from it); CheckpointError names the file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory") from None
    except Exception as e:  # truncated zip, not a torch file, objects beyond tensors
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in reason.lower() or "unsupported global" in str(e).lower():
            reason = "holds objects other than tensors and plain values"
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({reason[:160]})"
                              ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint dict")
    return obj


def load_state(model: nn.Module, state: dict, where: str) -> None:
    """load_state_dict that reports missing/unexpected/mis-shaped keys in one line."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise CheckpointError(f"{where}: not a state dict of tensors")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:4])}"
                        + (" ..." if len(unexpected) > 4 else ""))
    if shapes:
        problems.append(f"shape {'; '.join(shapes[:3])}")
    if problems:
        raise CheckpointError(f"{where}: does not match its config.json ({'; '.join(problems)})")
    model.load_state_dict(state)


def load_generator_state(model: UnitHiFiGAN, g_file: str) -> None:
    """The generator of a g_ file into ``model`` (CheckpointError naming the file)."""
    ckpt = torch_load(g_file)
    if "generator" not in ckpt:
        hint = " (a do_ file holds the discriminators; pass the g_ file)" if "mpd" in ckpt else ""
        raise CheckpointError(f"{g_file}: no 'generator' state dict{hint}")
    load_state(model, ckpt["generator"], g_file)


def load_generator(g_file: str, cfg: HiFiGANConfig) -> UnitHiFiGAN:
    model = UnitHiFiGAN(cfg)
    load_generator_state(model, g_file)
    return model


def load(path: str, config: str | None = None, device: torch.device | str = "cpu",
         dtype: torch.dtype = torch.float32) -> UnitHiFiGAN:
    """A published-layout unit HiFi-GAN, in eval mode with weight norm folded (the
    ``hifigan`` entry of sgpt.vocode.architectures)."""
    g_file, config_file = find_vocoder(path, config)
    cfg = read_config(config_file)
    model = load_generator(g_file, cfg)
    model.eval().fold_weight_norm()
    return model.to(device=device, dtype=dtype)
