"""Training a unit HiFi-GAN from (audio, units) records, as speech-resynthesis does.

Generator (sgpt.vocode.hifigan.UnitHiFiGAN) against a multi-period and a multi-scale discriminator
(HiFi-GAN, Kong et al. 2020), with the losses of speech-resynthesis's
``examples/speech_to_speech_translation/train.py``: L1 log-mel x 45, feature matching x 2,
least-squares adversarial, and the duration predictor's MSE on log(duration + 1) of the runs
of each training segment (first and last runs dropped, as they may be cut), weighted by
``dur_prediction_weight``.

Checkpoints are the published layout, so fairseq and speech-resynthesis load them:
``g_XXXXXXXX`` = ``{"generator": state_dict}``, ``do_XXXXXXXX`` = ``{"mpd", "msd",
"optim_g", "optim_d", "steps", "epoch", "elapsed"}`` and ``config.json`` (opening with sgpt's
format and version, keys they ignore); XXXXXXXX counts optimizer updates. A run resumes from
the newest pair in its directory. Every random draw (the init, the segment sampled for each
slot of each step, dropout) is seeded from ``seed`` and the step, so a resumed run follows the
same path as one that was never stopped. Losses go to ``train_log.jsonl``, one line per logged
step, with the seconds of updates so far ("elapsed", checkpointed), and one line each time a
run starts (``sgpt.core.training.run_record``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import AvgPool1d
from torch.nn.utils import spectral_norm

from sgpt.core.audio import load_audio
from sgpt.core.errors import AudioError, CheckpointError, RecordError, SgptError
from sgpt.core.files import write_atomic, write_json
from sgpt.core.stream import check_units, frame_units
from sgpt.core.training import Interrupted, autocast, run_record, stop_requests, trim_log
from sgpt.vocode.architectures import VOCODER_FORMAT, given_config
from sgpt.vocode.hifigan import (
    LRELU_SLOPE,
    MHUBERT_KM1000_CONFIG,
    HiFiGANConfig,
    UnitHiFiGAN,
    WNConv1d,
    WNConv2d,
    find_vocoder,
    get_padding,
    load_generator_state,
    load_state,
    read_config,
    torch_load,
)

LOG_NAME = "train_log.jsonl"

# Training knobs read from config.json (speech-resynthesis names) and their defaults.
TRAIN_DEFAULTS = {
    "batch_size": 16, "learning_rate": 0.0002, "adam_b1": 0.8, "adam_b2": 0.99,
    "lr_decay": 0.999, "seed": 1234, "segment_size": 8960, "code_hop_size": 320,
    "num_mels": 80, "n_fft": 1024, "hop_size": 256, "win_size": 1024, "fmin": 0,
    "fmax_for_loss": None, "dur_prediction_weight": 1.0,
    # not a speech-resynthesis key: discriminators with 1/D of the published channels
    # (D in 1, 2, 4, 8), for quick experiments on a CPU; 1 keeps the do_ layout theirs.
    "discriminator_channel_divisor": 1,
    # not a speech-resynthesis key either: updates of the generator alone on the mel (and
    # duration) loss before the discriminators join, as ParallelWaveGAN's
    # discriminator_train_start_steps. Each costs about a third of a full update, and the
    # waveform becomes intelligible long before the adversarial losses pay. 0: from the start.
    "discriminator_start_step": 0,
}


# ---------------------------------------------------------------------------------------------
# Discriminators (parameter names as in speech-resynthesis, so do_ files interchange)


class DiscriminatorP(nn.Module):
    """Looks at every ``period``-th sample: the waveform folded into [T / period, period]."""

    def __init__(self, period: int, kernel_size: int = 5, stride: int = 3, divisor: int = 1):
        super().__init__()
        self.period = period
        pad = (get_padding(5, 1), 0)
        chans = [1] + [c // divisor for c in (32, 128, 512, 1024)]
        top = chans[-1]
        self.convs = nn.ModuleList(
            [WNConv2d(a, b, (kernel_size, 1), (stride, 1), padding=pad)
             for a, b in zip(chans, chans[1:])]
            + [WNConv2d(top, top, (kernel_size, 1), 1, padding=(2, 0))])
        self.conv_post = WNConv2d(top, 1, (3, 1), 1, padding=(1, 0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        fmap = []
        b, c, t = x.shape
        if t % self.period:
            n_pad = self.period - t % self.period
            x = F.pad(x, (0, n_pad), "reflect")
            t += n_pad
        x = x.view(b, c, t // self.period, self.period)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, periods: Iterable[int] = (2, 3, 5, 7, 11), divisor: int = 1):
        super().__init__()
        self.discriminators = nn.ModuleList(DiscriminatorP(p, divisor=divisor)
                                            for p in periods)

    def forward(self, y, y_hat):
        real, fake, fmap_real, fmap_fake = [], [], [], []
        for d in self.discriminators:
            r, fr = d(y)
            g, fg = d(y_hat)
            real.append(r)
            fake.append(g)
            fmap_real.append(fr)
            fmap_fake.append(fg)
        return real, fake, fmap_real, fmap_fake


class DiscriminatorS(nn.Module):
    """Strided grouped 1-d convolutions over the waveform (MelGAN's discriminator)."""

    def __init__(self, use_spectral_norm: bool = False, divisor: int = 1):
        super().__init__()
        c128, c256, c512, c1024 = (c // divisor for c in (128, 256, 512, 1024))

        def conv(*args, **kwargs):
            if use_spectral_norm:
                return spectral_norm(nn.Conv1d(*args, **kwargs))
            return WNConv1d(*args, **kwargs)

        self.convs = nn.ModuleList([
            conv(1, c128, 15, 1, padding=7),
            conv(c128, c128, 41, 2, groups=4, padding=20),
            conv(c128, c256, 41, 2, groups=16, padding=20),
            conv(c256, c512, 41, 4, groups=16, padding=20),
            conv(c512, c1024, 41, 4, groups=16, padding=20),
            conv(c1024, c1024, 41, 1, groups=16, padding=20),
            conv(c1024, c1024, 5, 1, padding=2),
        ])
        self.conv_post = conv(c1024, 1, 3, 1, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        fmap = []
        for c in self.convs:
            x = F.leaky_relu(c(x), LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, divisor: int = 1):
        super().__init__()
        self.discriminators = nn.ModuleList(
            [DiscriminatorS(use_spectral_norm=True, divisor=divisor),
             DiscriminatorS(divisor=divisor), DiscriminatorS(divisor=divisor)])
        self.meanpools = nn.ModuleList([AvgPool1d(4, 2, padding=2), AvgPool1d(4, 2, padding=2)])

    def forward(self, y, y_hat):
        real, fake, fmap_real, fmap_fake = [], [], [], []
        for i, d in enumerate(self.discriminators):
            if i:
                y, y_hat = self.meanpools[i - 1](y), self.meanpools[i - 1](y_hat)
            r, fr = d(y)
            g, fg = d(y_hat)
            real.append(r)
            fake.append(g)
            fmap_real.append(fr)
            fmap_fake.append(fg)
        return real, fake, fmap_real, fmap_fake


# ---------------------------------------------------------------------------------------------
# Losses


def feature_loss(fmap_real, fmap_fake) -> torch.Tensor:
    loss = 0.0
    for dr, dg in zip(fmap_real, fmap_fake):
        for r, g in zip(dr, dg):
            loss = loss + torch.mean(torch.abs(r.float() - g.float()))
    return loss * 2


def discriminator_loss(real_outputs, fake_outputs) -> torch.Tensor:
    loss = 0.0
    for r, g in zip(real_outputs, fake_outputs):
        loss = loss + torch.mean((1 - r.float()) ** 2) + torch.mean(g.float() ** 2)
    return loss


def generator_loss(fake_outputs) -> torch.Tensor:
    loss = 0.0
    for g in fake_outputs:
        loss = loss + torch.mean((1 - g.float()) ** 2)
    return loss


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz)
                    / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                fmax: float | None) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters, Slaney-normalised (librosa.filters.mel)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


class MelSpectrogram(nn.Module):
    """HiFi-GAN's log-mel: reflect-padded STFT (not centred), magnitude, mel, log(>= 1e-5)."""

    def __init__(self, sample_rate: int, n_fft: int, num_mels: int, hop_size: int,
                 win_size: int, fmin: float, fmax: float | None):
        super().__init__()
        self.n_fft, self.hop, self.win = n_fft, hop_size, win_size
        self.register_buffer("basis", torch.from_numpy(
            mel_filters(sample_rate, n_fft, num_mels, fmin, fmax)), persistent=False)
        self.register_buffer("window", torch.hann_window(win_size), persistent=False)

    def magnitude(self, y: torch.Tensor) -> torch.Tensor:
        """[B, S] float waveform -> its STFT's magnitude [B, n_fft // 2 + 1, frames]."""
        pad = (self.n_fft - self.hop) // 2
        y = F.pad(y.float()[:, None], (pad, pad), mode="reflect")[:, 0]
        spec = torch.stft(y, self.n_fft, hop_length=self.hop, win_length=self.win,
                          window=self.window, center=False, normalized=False, onesided=True,
                          return_complex=True)
        return torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """[B, S] float waveform -> [B, num_mels, frames]."""
        return torch.log(torch.clamp(self.basis @ self.magnitude(y), min=1e-5))


def duration_loss(model: UnitHiFiGAN, codes: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """MSE of predicted log(duration + 1) over the runs of each segment of frame codes.

    The first and last runs of a segment may be cut by the sampling, so they are left out
    (when there are more than two), as in speech-resynthesis.
    """
    feats, counts = [], []
    for b in range(codes.shape[0]):
        _, count = torch.unique_consecutive(codes[b], return_counts=True)
        if len(count) > 2:
            starts = count.cumsum(0)[:-2]  # first frame of runs 1 .. n-2
            count = count[1:-1]
        else:
            starts = count.cumsum(0) - 1
        feats.append(emb[b, starts])
        counts.append(count)
    lengths = torch.tensor([len(c) for c in counts], device=codes.device)
    x = nn.utils.rnn.pad_sequence(feats, batch_first=True)
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    mask = valid[:, :, None].to(x.dtype)
    log_pred = model.dur_predictor(x * mask, mask)[valid]
    target = torch.log(torch.cat(counts).float() + 1)
    return F.mse_loss(log_pred.float(), target)


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Example:
    id: str
    audio: str
    codes: np.ndarray  # unit per frame (code_hop_size samples)
    speaker: int


def make_example(record: dict, cfg: HiFiGANConfig) -> Example:
    """Check a training record; RecordError naming it if it cannot be used."""
    rid = record["id"]
    if not isinstance(record.get("audio"), str) or not record["audio"]:
        raise RecordError(rid, "no 'audio' path to train on")
    if not record.get("units"):
        raise RecordError(rid, "no 'units' to train on")
    check_units(record, cfg.num_embeddings, "the vocoder")
    speaker = 0
    if cfg.multispkr:
        speaker = record.get("speaker")
        if not isinstance(speaker, int) or not 0 <= speaker < cfg.num_speakers:
            raise RecordError(rid, f"a multi-speaker vocoder needs 'speaker' (0 to "
                                   f"{cfg.num_speakers - 1}) in each record")
    if not os.path.isfile(record["audio"]):
        raise RecordError(rid, f"{record['audio']}: no such audio file" + (
            "" if os.path.isabs(record["audio"]) else
            f" (relative paths are read from {os.getcwd()})"))
    try:
        info = sf.info(record["audio"])
    except Exception as e:  # missing file, not audio
        reason = str(e).split(":")[-1].strip() or "unreadable"
        raise RecordError(rid, f"{record['audio']}: not audio that libsndfile can read "
                               f"({reason})") from None
    codes = np.asarray(frame_units(record), dtype=np.int64)
    # units and audio that do not cover the same time would teach the generator garbage
    # (HuBERT gives len // hop frames, less a fraction; other encoders round otherwise)
    audio_frames = info.frames / info.samplerate * cfg.sampling_rate / cfg.hop
    if abs(audio_frames - len(codes)) > 2 + 0.01 * len(codes):
        unit_s, audio_s = len(codes) * cfg.hop / cfg.sampling_rate, info.frames / info.samplerate
        raise RecordError(rid, f"{len(codes)} frames of units ({unit_s:.2f} s) for "
                               f"{record['audio']} of {audio_s:.2f} s: not its units?")
    return Example(rid, record["audio"], codes, speaker)


class SegmentSampler:
    """Batches of (codes [B, F], audio [B, F * hop], speakers [B]) segments.

    Epochs shuffle the examples (seeded by the epoch); the segment of each slot of each step
    is drawn from a generator seeded by (seed, step, slot). Audio is read when needed,
    peak-normalised to 0.95 and cut to whole frames, like speech-resynthesis's CodeDataset;
    utterances shorter than a segment are repeated.
    """

    def __init__(self, examples: list[Example], batch_size: int, segment_frames: int,
                 hop: int, sample_rate: int, seed: int):
        self.examples = examples
        self.batch_size = batch_size
        self.frames = segment_frames
        self.hop = hop
        self.sample_rate = sample_rate
        self.seed = seed
        self.steps_per_epoch = max(1, len(examples) // batch_size)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def indices(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        rng = np.random.default_rng([self.seed, epoch])
        order = np.concatenate([rng.permutation(len(self.examples)) for _ in range(
            math.ceil(self.batch_size / len(self.examples)))])
        return order[k * self.batch_size:(k + 1) * self.batch_size].tolist()

    def segment(self, ex: Example, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        try:
            audio = load_audio(ex.audio, self.sample_rate)
        except AudioError as e:
            raise RecordError(ex.id, f"{ex.audio}: {e}") from None
        peak = np.abs(audio).max()
        audio = audio / peak * 0.95 if peak > 0 else audio
        n = min(len(audio) // self.hop, len(ex.codes))
        audio, codes = audio[:n * self.hop], ex.codes[:n]
        while n < self.frames:
            audio, codes, n = np.concatenate([audio, audio]), np.concatenate([codes, codes]), 2 * n
        start = int(rng.integers(0, n - self.frames + 1))
        return (codes[start:start + self.frames],
                audio[start * self.hop:(start + self.frames) * self.hop])

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes, audio, speakers = [], [], []
        for slot, i in enumerate(self.indices(step)):
            ex = self.examples[i]
            c, a = self.segment(ex, np.random.default_rng([self.seed, step, slot]))
            codes.append(torch.from_numpy(c))
            audio.append(torch.from_numpy(np.ascontiguousarray(a)))
            speakers.append(ex.speaker)
        return torch.stack(codes), torch.stack(audio), torch.tensor(speakers)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def latest_pair(directory: str) -> int | None:
    """The highest step with both g_ and do_ files in ``directory``."""
    steps = []
    for path in os.listdir(directory) if os.path.isdir(directory) else []:
        if path.startswith("g_") and path[2:].isdigit():
            if os.path.isfile(os.path.join(directory, "do_" + path[2:])):
                steps.append(int(path[2:]))
    return max(steps) if steps else None


def prune_checkpoints(directory: str, step: int, keep: int | None) -> list[str]:
    """After the pair of ``step`` is written: remove the older do_ files (discriminators and
    optimizer state, needed only to resume, from the newest) and all but the ``keep`` newest
    g_ files (None: keep every g_). Files of later steps, left by another run, stay."""
    found: dict[str, list[tuple[int, str]]] = {"g_": [], "do_": []}
    for name in os.listdir(directory):
        for prefix, into in found.items():
            rest = name[len(prefix):]
            if name.startswith(prefix) and rest.isdigit() and int(rest) <= step:
                into.append((int(rest), name))
    remove = [name for s, name in found["do_"] if s < step]
    if keep is not None:
        remove += [name for _, name in sorted(found["g_"])[:-keep]]
    for name in remove:
        os.remove(os.path.join(directory, name))
    return remove


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainOptions:
    output: str
    steps: int = 500000
    checkpoint_interval: int = 5000
    log_interval: int = 100
    batch_size: int | None = None      # None: from config.json
    segment_size: int | None = None
    learning_rate: float | None = None
    seed: int | None = None
    keep: int | None = None            # newest g_ files kept; None: all
    init: str | None = None            # a g_ file or vocoder directory a new run starts from


def architecture(cfg: HiFiGANConfig) -> dict:
    d = cfg.to_dict()
    return {k: d.get(k) for k in HiFiGANConfig.REQUIRED + (
        "model_in_dim", "resblock", "dur_predictor_params", "multispkr", "num_speakers")}


def training_config(opts: TrainOptions, config_file: str | None) -> HiFiGANConfig:
    """The effective config: DIR/config.json when resuming, else ``config_file``, else that of
    the ``--init`` vocoder, else the published mHuBERT-km1000 one; flags override the
    training knobs."""
    existing = os.path.join(opts.output, "config.json")
    config_file = given_config(opts.output, config_file, opts.init)
    if os.path.exists(existing):
        cfg = read_config(existing)
        if config_file is not None:
            given = read_config(config_file)
            if architecture(given) != architecture(cfg):
                raise SgptError(f"{config_file}: its architecture differs from that of "
                                f"{existing}, which this run resumes; use a new directory")
            cfg.extra = {**cfg.extra, **given.extra}
    elif config_file is not None:
        cfg = read_config(config_file)
    else:
        cfg = HiFiGANConfig.from_dict(copy.deepcopy(MHUBERT_KM1000_CONFIG), "default config")
    for key, value in (("batch_size", opts.batch_size), ("segment_size", opts.segment_size),
                       ("learning_rate", opts.learning_rate), ("seed", opts.seed)):
        if value is not None:
            cfg.extra[key] = value
    for key, value in TRAIN_DEFAULTS.items():
        cfg.extra.setdefault(key, value)
    hop = cfg.extra["code_hop_size"]
    if hop != cfg.hop or not cfg.exact_hop:
        raise SgptError(f"code_hop_size {hop} must equal the product of upsample_rates "
                        f"({cfg.hop}), each upsampling exact")
    if cfg.extra["discriminator_channel_divisor"] not in (1, 2, 4, 8):
        raise SgptError("discriminator_channel_divisor must be 1, 2, 4 or 8")
    if cfg.extra["segment_size"] % hop or cfg.extra["segment_size"] < hop:
        raise SgptError(f"segment_size {cfg.extra['segment_size']} must be a positive multiple "
                        f"of code_hop_size {hop}")
    return cfg


class SegmentTrainer:
    """What every vocoder trainer shares: the run (resume or --init, the log, checkpoints
    every N updates, SIGINT/SIGTERM). A subclass has ``generator``, ``cfg`` (with ``hop``,
    ``sampling_rate``, ``extra``), ``opts``, ``seed``, ``steps``, ``info`` and implements
    ``resume``, ``start_from``, ``save``, ``step(sampler, examples) -> log entry`` and
    ``describe(entry) -> str`` (the losses of a log line); ``models`` are put in train mode.
    Its ``__init__`` keeps the run's settings and seeds torch before the subclass builds its
    models."""

    def __init__(self, cfg, opts: TrainOptions, device: torch.device,
                 amp: torch.dtype | None, info: Callable[[str], None]):
        self.cfg, self.opts, self.device, self.amp, self.info = cfg, opts, device, amp, info
        self.seed = int(cfg.extra["seed"])
        self.elapsed = 0.0  # seconds of updates, over every chunk of the run (checkpointed)
        torch.manual_seed(self.seed)

    def models(self) -> list[nn.Module]:
        return [self.generator]

    def sampler(self, examples: list[Example]) -> SegmentSampler:
        """The segments of every update: batch_size of segment_size samples."""
        h = self.cfg.extra
        return SegmentSampler(examples, int(h["batch_size"]),
                              int(h["segment_size"]) // self.cfg.hop, self.cfg.hop,
                              self.cfg.sampling_rate, self.seed)

    def train(self, examples: list[Example], advance: Callable[[int], None] = lambda n=1: None
              ) -> dict | None:
        """Train until ``opts.steps`` updates; returns the last log entry."""
        opts = self.opts
        os.makedirs(opts.output, exist_ok=True)
        write_json(os.path.join(opts.output, "config.json"),
                   {**VOCODER_FORMAT.stamp(), **self.cfg.to_dict()}, indent=4)
        log_path = os.path.join(opts.output, LOG_NAME)
        if self.resume():
            self.info(f"resuming from step {self.steps} in {opts.output}")
        elif opts.init is not None:
            self.info(f"starting from the generator of {self.start_from(opts.init)}")
        trim_log(log_path, self.steps)
        advance(min(self.steps, opts.steps))
        if self.steps >= opts.steps:
            self.info(f"{opts.output} already holds step {self.steps} (--steps {opts.steps})")
            return None
        sampler = self.sampler(examples)
        for model in self.models():
            model.train()
        entry = None
        with open(log_path, "a", encoding="utf-8") as log, \
                stop_requests(self.info) as stop:
            log.write(json.dumps(run_record(self.steps, self.device, self.amp)) + "\n")
            while self.steps < opts.steps:
                start = time.perf_counter()
                entry = self.step(sampler, examples)
                seconds = time.perf_counter() - start
                self.elapsed += seconds
                entry["seconds"] = round(seconds, 4)
                entry["elapsed_s"] = round(self.elapsed, 3)
                advance(1)
                stopping = bool(stop)  # read once: a later signal waits for the next update
                last = self.steps == opts.steps or stopping
                if self.steps % opts.log_interval == 0 or last or self.steps == 1:
                    log.write(json.dumps(entry) + "\n")
                    log.flush()
                    self.info(f"step {self.steps}: {self.describe(entry)} "
                              f"({entry['seconds']:.2f} s/step)")
                if self.steps % opts.checkpoint_interval == 0 or last:
                    self.save()
                if stopping and self.steps < opts.steps:
                    raise Interrupted(stop[0], self.steps)
        return entry


class Trainer(SegmentTrainer):
    def __init__(self, cfg: HiFiGANConfig, opts: TrainOptions, device: torch.device,
                 amp: torch.dtype | None = None, info: Callable[[str], None] = print):
        super().__init__(cfg, opts, device, amp, info)
        h = cfg.extra
        self.generator = UnitHiFiGAN(cfg).to(device)
        divisor = int(h["discriminator_channel_divisor"])
        self.mpd = MultiPeriodDiscriminator(divisor=divisor).to(device)
        self.msd = MultiScaleDiscriminator(divisor=divisor).to(device)
        betas = (h["adam_b1"], h["adam_b2"])
        self.optim_g = torch.optim.AdamW(self.generator.parameters(), h["learning_rate"],
                                         betas=betas)
        self.optim_d = torch.optim.AdamW(list(self.msd.parameters()) + list(self.mpd.parameters()),
                                         h["learning_rate"], betas=betas)
        self.mel = MelSpectrogram(cfg.sampling_rate, h["n_fft"], h["num_mels"], h["hop_size"],
                                  h["win_size"], h["fmin"], h["fmax_for_loss"]).to(device)
        self.steps = 0
        self.epoch = 0

    # -- checkpoints --------------------------------------------------------------------------

    def resume(self) -> bool:
        step = latest_pair(self.opts.output)
        if step is None:
            return False
        g_file = os.path.join(self.opts.output, f"g_{step:08d}")
        do_file = os.path.join(self.opts.output, f"do_{step:08d}")
        g, do = torch_load(g_file), torch_load(do_file)
        missing = [k for k in ("mpd", "msd", "optim_g", "optim_d", "steps") if k not in do]
        if "generator" not in g or missing:
            raise CheckpointError(f"{do_file if missing else g_file}: not a training checkpoint "
                                  f"(missing {', '.join(missing) or 'generator'})")
        load_state(self.generator, g["generator"], g_file)
        load_state(self.mpd, do["mpd"], do_file)
        load_state(self.msd, do["msd"], do_file)
        try:
            self.optim_g.load_state_dict(do["optim_g"])
            self.optim_d.load_state_dict(do["optim_d"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{do_file}: optimizer state does not fit ({e})") from None
        self.steps, self.epoch = int(do["steps"]), int(do.get("epoch", 0))
        self.elapsed = float(do.get("elapsed", 0.0))
        return True

    def start_from(self, path: str) -> str:
        """A new run's generator from another's (fine-tuning a published or earlier vocoder on
        new audio): its weights, with fresh discriminators and optimizers, from update 0.
        Its architecture must be this run's; returns the g_ file read."""
        g_file, config_file = find_vocoder(path)
        if os.path.exists(config_file):
            theirs = read_config(config_file)
            if architecture(theirs) != architecture(self.cfg):
                raise SgptError(f"{config_file}: its architecture differs from this run's "
                                f"config; --init needs the same one")
        load_generator_state(self.generator, g_file)
        return g_file

    def save(self) -> None:
        out = self.opts.output
        name = f"{self.steps:08d}"
        g = {"generator": {k: v.detach().cpu() for k, v in self.generator.state_dict().items()}}
        do = {"mpd": self.mpd.state_dict(), "msd": self.msd.state_dict(),
              "optim_g": self.optim_g.state_dict(), "optim_d": self.optim_d.state_dict(),
              "steps": self.steps, "epoch": self.epoch, "elapsed": self.elapsed}
        write_atomic(os.path.join(out, "g_" + name), lambda f: torch.save(g, f))
        write_atomic(os.path.join(out, "do_" + name), lambda f: torch.save(do, f))
        prune_checkpoints(out, self.steps, self.opts.keep)

    # -- one update ---------------------------------------------------------------------------

    def autocast(self):
        return autocast(self.device, self.amp)

    def generate(self, codes: torch.Tensor, speakers: torch.Tensor):
        """Training forward: frame codes [B, F] -> waveform [B, 1, F * hop], duration loss."""
        g = self.generator
        lengths = torch.full((codes.shape[0],), codes.shape[1], device=codes.device)
        dur = torch.zeros((), device=codes.device)
        if g.dur_predictor is not None:
            dur = duration_loss(g, codes, g.dict(codes))
        x, lengths = g.frames(codes, lengths, speaker=speakers if g.spkr is not None else None)
        y_hat, _ = g.decode(x, lengths)
        return y_hat[:, None], dur

    def step(self, sampler: SegmentSampler, examples: list[Example] | None = None) -> dict:
        h = self.cfg.extra
        index = self.steps  # 0-based index of this update
        self.epoch = sampler.epoch_of(index)
        lr = h["learning_rate"] * h["lr_decay"] ** self.epoch
        for opt in (self.optim_g, self.optim_d):
            for group in opt.param_groups:
                group["lr"] = lr
        torch.manual_seed(self.seed * 1_000_003 + index)  # dropout, spectral-norm draws
        codes, y, speakers = (t.to(self.device) for t in sampler.batch(index))
        y = y[:, None]
        y_mel = self.mel(y[:, 0])
        with self.autocast():
            y_hat, loss_dur = self.generate(codes, speakers)
        y_hat_mel = self.mel(y_hat[:, 0].float())
        mel_error = F.l1_loss(y_mel, y_hat_mel)
        log = {"step": index + 1, "epoch": self.epoch, "lr": lr,
               "mel_error": mel_error.item()}
        if index < h["discriminator_start_step"]:
            return self._update_generator(mel_error * 45, loss_dur, log)

        self.optim_d.zero_grad(set_to_none=True)
        with self.autocast():
            real_f, fake_f, _, _ = self.mpd(y, y_hat.detach())
            real_s, fake_s, _, _ = self.msd(y, y_hat.detach())
        loss_disc = discriminator_loss(real_f, fake_f) + discriminator_loss(real_s, fake_s)
        loss_disc.backward()
        self.optim_d.step()

        with self.autocast():
            _, fake_f, fmap_fr, fmap_fg = self.mpd(y, y_hat)
            _, fake_s, fmap_sr, fmap_sg = self.msd(y, y_hat)
        loss_fm = feature_loss(fmap_fr, fmap_fg) + feature_loss(fmap_sr, fmap_sg)
        loss_adv = generator_loss(fake_f) + generator_loss(fake_s)
        log.update(loss_fm=loss_fm.item(), loss_adv=loss_adv.item(),
                   loss_disc=loss_disc.item())
        return self._update_generator(loss_adv + loss_fm + mel_error * 45, loss_dur, log)

    def _update_generator(self, loss_gen: torch.Tensor, loss_dur: torch.Tensor,
                          log: dict) -> dict:
        if self.generator.dur_predictor is not None:
            loss_gen = loss_gen + loss_dur * self.cfg.extra["dur_prediction_weight"]
        self.optim_g.zero_grad(set_to_none=True)
        loss_gen.backward()
        self.optim_g.step()
        self.steps += 1
        return {**log, "loss_gen_all": loss_gen.item(), "loss_dur": loss_dur.item()}

    # -- the run ------------------------------------------------------------------------------

    def models(self) -> list[nn.Module]:
        return [self.generator, self.mpd, self.msd]

    def describe(self, entry: dict) -> str:
        disc = (f"disc {entry['loss_disc']:.3f}" if "loss_disc" in entry
                else "no discriminators yet")
        return (f"gen {entry['loss_gen_all']:.3f} mel {entry['mel_error']:.3f} {disc} "
                f"dur {entry['loss_dur']:.3f}")
