"""A unit Vocos: sgpt-vocode's ``vocos`` architecture (Siuzdak 2023, "Vocos: closing the gap
between time-domain and Fourier-based neural vocoders", with units as its input).

Units (+ a speaker) are embedded and repeated by their durations to frames at the unit rate
(``hop`` samples a frame: 50 frames/s at 16 kHz); a stack of ConvNeXt blocks runs at that
rate; a linear head predicts each frame's STFT, log-magnitude and phase; an inverse STFT
(``n_fft`` points, hop ``hop``, Hann window, "same" padding: exactly ``hop`` samples a
frame) makes the waveform. All the capacity sits at the frame rate, where a HiFi-GAN runs
transposed convolutions at the audio rate: about 1/25 of its compute per second at equal
width. A duration predictor (fastspeech2's, as in the unit HiFi-GAN) gives frames per unit
for deduplicated units.

Padding never leaks into an utterance: frames beyond each length are zeroed after every
block, and the inverse STFT normalises each utterance by the window envelope of its own
frames, so a batch gives what one utterance at a time gives; an output sample depends on
at most ``context`` frames either side, so chunks with that context join seamlessly.

Checkpoint (a directory): ``config.json`` (``"arch": "vocos"``, the shape and the training
knobs) and ``g_XXXXXXXX.safetensors``, the generator after XXXXXXXX updates (the newest is
used); a training run adds ``state/`` (sgpt.vocode.vocos_train). Nothing is pickled.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from sgpt.core.errors import CheckpointError
from sgpt.vocode.hifigan import DurationPredictor, DurationPredictorConfig, durations_from_log

ARCH = "vocos"
G_FILE = re.compile(r"^g_(\d{8})\.safetensors$")


@dataclass
class VocosConfig:
    """The generator's shape; ``extra`` keeps the training knobs of config.json."""

    num_embeddings: int
    embedding_dim: int = 128
    dim: int = 256
    intermediate_dim: int = 768
    num_layers: int = 8
    kernel_size: int = 7
    n_fft: int = 1280
    code_hop_size: int = 320
    sampling_rate: int = 16000
    num_speakers: int = 0  # 0: one voice, no speaker input
    dur_predictor_params: DurationPredictorConfig | None = None
    extra: dict = field(default_factory=dict)

    POSITIVE = ("num_embeddings", "embedding_dim", "dim", "intermediate_dim", "num_layers",
                "kernel_size", "n_fft", "code_hop_size", "sampling_rate")

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> VocosConfig:
        """Parse and check a config.json dict; CheckpointError names ``where`` and the key."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{where}: a vocoder config must be a JSON object")
        if d.get("arch") != ARCH:
            raise CheckpointError(f"{where}: not a vocos config (arch {d.get('arch')!r})")
        if "num_embeddings" not in d:
            raise CheckpointError(f"{where}: missing field num_embeddings")
        names = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: d[k] for k in names if k in d and d[k] is not None}
        for key in (*cls.POSITIVE, "num_speakers"):
            value = kwargs.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < (
                    0 if key == "num_speakers" else 1):
                raise CheckpointError(f"{where}: '{key}' must be a "
                                      f"{'non-negative' if key == 'num_speakers' else 'positive'}"
                                      " integer")
        dp = kwargs.get("dur_predictor_params")
        if dp is not None:
            try:
                kwargs["dur_predictor_params"] = DurationPredictorConfig(**dp)
            except TypeError as e:
                raise CheckpointError(f"{where}: bad dur_predictor_params ({e})") from None
        cfg = cls(**kwargs, extra={k: v for k, v in d.items() if k not in names | {"arch"}})

        def bad(reason: str):
            raise CheckpointError(f"{where}: {reason}")

        if cfg.dur_predictor_params is not None:
            cfg.dur_predictor_params.check(bad)
        if cfg.kernel_size % 2 == 0:
            raise CheckpointError(f"{where}: 'kernel_size' must be odd")
        if cfg.n_fft < cfg.code_hop_size or cfg.n_fft % 2:
            raise CheckpointError(f"{where}: 'n_fft' must be even and at least code_hop_size")
        if dp is not None and cfg.dur_predictor_params.encoder_embed_dim != cfg.embedding_dim:
            raise CheckpointError(f"{where}: dur_predictor_params.encoder_embed_dim must equal "
                                  "embedding_dim")
        return cfg

    def to_dict(self) -> dict:
        d = {"arch": ARCH}
        for f in fields(self):
            if f.name != "extra":
                value = getattr(self, f.name)
                d[f.name] = asdict(value) if f.name == "dur_predictor_params" and value else value
        return {**self.extra, **d}

    def architecture(self) -> dict:
        """What a checkpoint's weights depend on (training knobs left out)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.extra}

    @property
    def hop(self) -> int:
        return self.code_hop_size

    @property
    def multispkr(self) -> bool:
        return self.num_speakers > 0

    @property
    def context(self) -> int:
        """Frames on either side that can change one output sample: the convolutions'
        reach, plus the frames whose windows overlap it in the inverse STFT."""
        reach = (self.kernel_size // 2) * (self.num_layers + 1)
        return reach + math.ceil(self.n_fft / self.code_hop_size)


def valid_positions(lengths: torch.Tensor, total: int) -> torch.Tensor:
    """[B, total] booleans: True inside each item's length."""
    return torch.arange(total, device=lengths.device)[None, :] < lengths[:, None]


class ConvNeXtBlock(nn.Module):
    """Depthwise convolution, LayerNorm, pointwise MLP (GELU), layer scale, residual."""

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int, scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T] -> [B, C, T]."""
        y = self.norm(self.dwconv(x).transpose(1, 2))
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.transpose(1, 2)


def inverse_stft(spec: torch.Tensor, lengths: torch.Tensor, n_fft: int, hop: int,
                 window: torch.Tensor) -> torch.Tensor:
    """Complex STFT frames [B, n_fft // 2 + 1, T] -> waveforms [B, T * hop].

    Overlap-add of the windowed inverse FFTs, divided by the squared-window envelope of each
    utterance's own frames (frames at or beyond its length add nothing to either), with
    (n_fft - hop) / 2 samples trimmed at each end: frame t is centred on sample
    t * hop + hop / 2, and an utterance of T frames is exactly T * hop samples.
    """
    batch, _, frames = spec.shape
    valid = valid_positions(lengths, frames)
    frames_time = torch.fft.irfft(spec, n=n_fft, dim=1) * window[None, :, None]
    frames_time = frames_time * valid[:, None, :]
    total = (frames - 1) * hop + n_fft
    wave = F.fold(frames_time, (1, total), (1, n_fft), stride=(1, hop))[:, 0, 0]
    env = F.fold((window ** 2)[None, :, None] * valid[:, None, :].to(window.dtype),
                 (1, total), (1, n_fft), stride=(1, hop))[:, 0, 0]
    pad = (n_fft - hop) // 2
    wave, env = wave[:, pad:pad + frames * hop], env[:, pad:pad + frames * hop]
    return torch.where(env > 1e-11, wave / env.clamp(min=1e-11), torch.zeros_like(wave))


def stft(wave: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """The analysis that ``inverse_stft`` inverts: [B, T * hop] -> [B, n_fft // 2 + 1, T]."""
    pad = (n_fft - hop) // 2
    x = F.pad(wave[:, None], (pad, pad + hop), mode="reflect" if wave.shape[-1] > pad + hop
              else "constant")[:, 0]
    spec = torch.stft(x, n_fft, hop, window=window, center=False, return_complex=True)
    return spec[..., :wave.shape[-1] // hop]


class UnitVocos(nn.Module):
    """Units -> frames -> ConvNeXt -> STFT -> waveform; keeps the vocoder contract of
    sgpt.vocode.architectures."""

    def __init__(self, cfg: VocosConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.num_embeddings, cfg.embedding_dim)
        self.speaker_embed = (nn.Embedding(cfg.num_speakers, cfg.embedding_dim)
                              if cfg.num_speakers else None)
        self.dur_predictor = (DurationPredictor(cfg.dur_predictor_params)
                              if cfg.dur_predictor_params is not None else None)
        in_dim = cfg.embedding_dim * (2 if cfg.num_speakers else 1)
        self.conv_in = nn.Conv1d(in_dim, cfg.dim, cfg.kernel_size, padding=cfg.kernel_size // 2)
        self.norm_in = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(cfg.dim, cfg.intermediate_dim, cfg.kernel_size, 1 / cfg.num_layers)
            for _ in range(cfg.num_layers))
        self.norm_out = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.n_fft + 2)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    # -- the contract -------------------------------------------------------------------------

    @property
    def k(self) -> int:
        return self.cfg.num_embeddings

    @property
    def sample_rate(self) -> int:
        return self.cfg.sampling_rate

    @property
    def hop(self) -> int:
        return self.cfg.code_hop_size

    @property
    def num_speakers(self) -> int | None:
        return self.cfg.num_speakers or None

    @property
    def has_duration_predictor(self) -> bool:
        return self.dur_predictor is not None

    @property
    def context(self) -> int:
        return self.cfg.context

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def log_durations(self, units: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Predicted log(frames + 1) of each unit [B, U] (the duration predictor sees the
        unit embeddings, not their gradients: it never pulls on the vocoder)."""
        mask = valid_positions(lengths, units.shape[1])[:, :, None].to(self.embed.weight.dtype)
        return self.dur_predictor(self.embed(units).detach() * mask, mask)

    def predict_durations(self, units: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.dur_predictor is None:
            raise CheckpointError("this vocoder has no duration predictor")
        valid = valid_positions(lengths, units.shape[1])
        return durations_from_log(self.log_durations(units, lengths)) * valid

    def frames(self, units: torch.Tensor, lengths: torch.Tensor,
               durations: torch.Tensor | None = None,
               speaker: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded frames [B, C, T] (zero beyond each length) and their lengths [B]."""
        x = self.embed(units)
        if durations is not None:
            lengths = durations.sum(1)
            flat = torch.repeat_interleave(x.reshape(-1, x.shape[-1]), durations.reshape(-1),
                                           dim=0)
            x = nn.utils.rnn.pad_sequence(list(flat.split(lengths.tolist())), batch_first=True)
        if self.speaker_embed is not None:
            if speaker is None:
                raise ValueError("a multi-speaker vocoder needs a speaker id")
            x = torch.cat([x, self.speaker_embed(speaker)[:, None].expand(-1, x.shape[1], -1)],
                          2)
        valid = valid_positions(lengths, x.shape[1])
        return (x * valid[:, :, None].to(x.dtype)).transpose(1, 2), lengths

    def decode(self, x: torch.Tensor, lengths: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, C, T] -> waveforms [B, T * hop] and their lengths [B]."""
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[-1], device=x.device)
        mask = valid_positions(lengths, x.shape[-1])[:, None].to(x.dtype)
        x = self.norm_in(self.conv_in(x * mask).transpose(1, 2)).transpose(1, 2) * mask
        for block in self.blocks:
            x = block(x) * mask
        out = self.head(self.norm_out(x.transpose(1, 2))).transpose(1, 2).float()
        log_mag, phase = out.chunk(2, dim=1)
        spec = torch.polar(torch.exp(log_mag.clamp(max=math.log(100.0))), phase)
        wave = inverse_stft(spec, lengths, self.cfg.n_fft, self.hop, self.window.float())
        return wave, lengths * self.hop

    def forward(self, units: torch.Tensor, lengths: torch.Tensor | None = None,
                durations: torch.Tensor | None = None, speaker: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if lengths is None:
            lengths = torch.full((units.shape[0],), units.shape[1], device=units.device)
        return self.decode(*self.frames(units, lengths, durations, speaker))


# ---------------------------------------------------------------------------------------------
# Files


def read_config(path: str) -> VocosConfig:
    from sgpt.vocode.hifigan import read_config_dict

    return VocosConfig.from_dict(read_config_dict(path), path)


def read_tensors(path: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; CheckpointError names the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def newest_generator(directory: str) -> str | None:
    """The ``g_XXXXXXXX.safetensors`` of most updates in ``directory``, or None."""
    from sgpt.vocode.hifigan import latest_checkpoint

    return latest_checkpoint(directory, "g_", ".safetensors")


def load(path: str, config: str | None = None, device: torch.device | str = "cpu",
         dtype: torch.dtype = torch.float32) -> UnitVocos:
    """A unit Vocos from its directory (its newest generator) or one g_ file, in eval mode
    (the ``vocos`` entry of sgpt.vocode.architectures)."""
    from sgpt.vocode.hifigan import load_state

    weights = newest_generator(path) if os.path.isdir(path) else path
    if weights is None:
        raise CheckpointError(f"{path}: no g_XXXXXXXX.safetensors generator in directory")
    cfg = read_config(config or os.path.join(os.path.dirname(weights) or ".", "config.json"))
    model = UnitVocos(cfg)
    load_state(model, read_tensors(weights), weights)
    return model.eval().to(device=device, dtype=dtype)
