"""Training a unit Vocos (sgpt.vocode.vocos) from (audio, units) records.

The same records, segments, checks and run loop as the unit HiFi-GAN's trainer
(sgpt.vocode.hifigan_train: make_example, SegmentSampler, SegmentTrainer). The generator learns from
reconstruction losses alone: L1 between log-mels (HiFi-GAN's mel, 80 bins) plus a
multi-resolution STFT loss (spectral convergence and log-magnitude L1 at three
resolutions), weighted by ``mel_weight`` and ``stft_weight``. The discriminators of the
Vocos recipe are not used: they run at the audio rate and would cost most of what the
frame-rate generator saves. The duration predictor learns beside it, on every run of the
whole utterances of each batch (MSE on log(frames + 1), weighted by
``dur_prediction_weight``), from the unit embeddings without pulling on them.

Durations it will not be given: a generated answer is vocoded through the duration
predictor, whose durations are a frame off for a quarter to a third of the units, and a
vocoder that only ever saw true durations loses words to that (``duration_jitter``, off by
default; examples/vocoder/make_config.py writes 0.5, measured better). With
``duration_jitter`` q, every second update is taken on the batch's segments with each run
of a unit made a frame longer or shorter (q/2 each, never under one frame), against the
audio's log-mel and log-magnitude spectrum at the frame rate warped the same way (each new
frame takes the frame of its run it falls on): the generator learns to render
a unit run of the length it is given.

Checkpoints, nothing pickled: ``g_XXXXXXXX.safetensors`` (the generator after XXXXXXXX
updates; sgpt-vocode takes the newest), and ``state/`` (``optimizer.safetensors`` and
``trainer.json``: step, epoch, optimizer settings), replaced as a whole, from which a run
resumes. Every random draw is seeded from ``seed`` and the step, so a resumed run follows
the same path as one never stopped.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from sgpt.core.errors import CheckpointError, SgptError
from sgpt.core.files import make_temp_dir, write_atomic, write_json
from sgpt.core.stream import dedup
from sgpt.core.training import autocast
from sgpt.vocode.architectures import given_config
from sgpt.vocode.hifigan_train import (
    Example,
    MelSpectrogram,
    SegmentSampler,
    SegmentTrainer,
    TrainOptions,
    make_example,
)
from sgpt.vocode.vocos import (
    G_FILE,
    UnitVocos,
    VocosConfig,
    newest_generator,
    read_config,
    read_tensors,
    valid_positions,
)

__all__ = ["TrainOptions", "Trainer", "make_example", "training_config"]

TRAIN_DEFAULTS = {
    "batch_size": 16, "learning_rate": 0.0005, "adam_b1": 0.9, "adam_b2": 0.99,
    "lr_decay": 0.999, "seed": 1234, "segment_size": 32000,
    "mel_weight": 1.0, "stft_weight": 1.0, "dur_prediction_weight": 1.0,
    # the loss's mel (HiFi-GAN's): its own STFT, not the head's
    "num_mels": 80, "mel_n_fft": 1024, "mel_hop_size": 256, "mel_win_size": 1024, "fmin": 0,
    "fmax_for_loss": None,
    # every second update on runs made a frame longer or shorter with this probability
    "duration_jitter": 0.0,
}
STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))  # (n_fft, hop), Hann windows
STATE_DIR = "state"


def training_config(opts: TrainOptions, config_file: str | None) -> VocosConfig:
    """DIR/config.json when resuming (a given config must have its architecture), else
    ``config_file``, else that of the ``--init`` vocoder; flags override the training
    knobs."""
    existing = os.path.join(opts.output, "config.json")
    config_file = given_config(opts.output, config_file, opts.init)
    if os.path.exists(existing):
        cfg = read_config(existing)
        if config_file is not None:
            given = read_config(config_file)
            if given.architecture() != cfg.architecture():
                raise SgptError(f"{config_file}: its architecture differs from that of "
                                f"{existing}, which this run resumes; use a new directory")
            cfg.extra = {**cfg.extra, **given.extra}
    elif config_file is not None:
        cfg = read_config(config_file)
    else:
        raise SgptError("a vocos run needs --config (examples/vocoder/make_config.py "
                        "--arch vocos writes one)")
    for key, value in (("batch_size", opts.batch_size), ("segment_size", opts.segment_size),
                       ("learning_rate", opts.learning_rate), ("seed", opts.seed)):
        if value is not None:
            cfg.extra[key] = value
    for key, value in TRAIN_DEFAULTS.items():
        cfg.extra.setdefault(key, value)
    where = existing if os.path.exists(existing) else config_file
    for key in ("batch_size", "segment_size", "seed", "num_mels", "mel_n_fft", "mel_hop_size",
                "mel_win_size"):
        if not isinstance(cfg.extra[key], int) or isinstance(cfg.extra[key], bool):
            raise SgptError(f"{where}: '{key}' must be an integer")
    jitter = cfg.extra["duration_jitter"]
    if not isinstance(jitter, (int, float)) or isinstance(jitter, bool) or not 0 <= jitter <= 1:
        raise SgptError(f"{where}: 'duration_jitter' must be a number from 0 to 1")
    hop = cfg.code_hop_size
    if cfg.extra["segment_size"] % hop or cfg.extra["segment_size"] < hop:
        raise SgptError(f"segment_size {cfg.extra['segment_size']} must be a positive multiple "
                        f"of code_hop_size {hop}")
    return cfg


def stft_loss(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss: spectral convergence + log-magnitude L1, averaged."""
    loss = y.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft, device=y.device)
        mags = [torch.stft(w, n_fft, hop, window=window, return_complex=True).abs()
                .clamp(min=1e-7) for w in (y, y_hat)]
        convergence = torch.linalg.norm(mags[0] - mags[1]) / torch.linalg.norm(mags[0])
        loss = loss + convergence + F.l1_loss(mags[1].log(), mags[0].log())
    return loss / len(STFT_RESOLUTIONS)


def jitter_runs(codes: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """Each run of a unit in frame codes [F] made a frame longer or shorter (``probability``
    / 2 each; never under one frame): the source frame [F'] of each new frame, the frame of
    its run it falls on (``codes[source]`` are the new codes)."""
    starts = np.flatnonzero(np.diff(codes, prepend=codes[0] - 1))
    lengths = np.diff(starts, append=len(codes))
    step = rng.choice([-1, 0, 1], size=len(lengths),
                      p=[probability / 2, 1 - probability, probability / 2])
    new = np.maximum(1, lengths + step)
    run = np.repeat(np.arange(len(lengths)), new)
    within = np.arange(len(run)) - np.repeat(np.cumsum(new) - new, new)
    return starts[run] + (within * 2 + 1) * lengths[run] // (2 * new[run])


def spectra(y: torch.Tensor, mel: MelSpectrogram) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-mel and the log-magnitude spectrum [B, bins, frames] of ``mel``'s STFT."""
    magnitude = mel.magnitude(y)
    return (torch.log(torch.clamp(mel.basis @ magnitude, min=1e-5)),
            torch.log(torch.clamp(magnitude, min=1e-5)))


def _tensor_dict(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """An optimizer's state as (tensors for safetensors, JSON-able rest)."""
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _optimizer_state(tensors: dict, info: dict) -> dict:
    state: dict = {}
    for name, value in list(tensors.items()) + list(info.get("plain", {}).items()):
        index, _, key = name.partition(".")
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": info["param_groups"]}


class Trainer(SegmentTrainer):
    def __init__(self, cfg: VocosConfig, opts: TrainOptions, device: torch.device,
                 amp: torch.dtype | None = None, info: Callable[[str], None] = print):
        super().__init__(cfg, opts, device, amp, info)
        h = cfg.extra
        self.generator = UnitVocos(cfg).to(device)
        self.optim = torch.optim.AdamW(self.generator.parameters(), h["learning_rate"],
                                       betas=(h["adam_b1"], h["adam_b2"]))
        self.mel = MelSpectrogram(cfg.sampling_rate, h["mel_n_fft"], h["num_mels"],
                                  h["mel_hop_size"], h["mel_win_size"], h["fmin"],
                                  h["fmax_for_loss"]).to(device)
        # the same mel at the frame rate (one frame a unit frame): what jitter warps
        self.frame_mel = MelSpectrogram(cfg.sampling_rate, h["mel_n_fft"], h["num_mels"],
                                        cfg.code_hop_size, h["mel_win_size"], h["fmin"],
                                        h["fmax_for_loss"]).to(device)
        self.steps = 0
        self.epoch = 0
        self._runs: dict[int, tuple[list[int], list[int]]] = {}

    # -- checkpoints --------------------------------------------------------------------------

    def save(self) -> None:
        from safetensors.torch import save

        out = self.opts.output
        meta = {"steps": str(self.steps)}
        weights = {k: v.detach().cpu().contiguous()
                   for k, v in self.generator.state_dict().items()}
        g_file = os.path.join(out, f"g_{self.steps:08d}.safetensors")
        write_atomic(g_file, lambda f: f.write(save(weights, metadata=meta)))
        tensors, info = _tensor_dict(self.optim)
        tmp = str(make_temp_dir(out, ".state."))
        with open(os.path.join(tmp, "optimizer.safetensors"), "wb") as f:
            f.write(save(tensors, metadata=meta))
        write_json(os.path.join(tmp, "trainer.json"),
                   {"steps": self.steps, "epoch": self.epoch, "elapsed": self.elapsed,
                    "optimizer": info})
        state, old = os.path.join(out, STATE_DIR), os.path.join(out, STATE_DIR + ".old")
        if os.path.exists(state):
            os.replace(state, old)
        os.replace(tmp, state)
        shutil.rmtree(old, ignore_errors=True)
        self._prune()

    def _prune(self) -> None:
        """Generators of steps before this one beyond the ``keep`` newest go."""
        if self.opts.keep is None:
            return
        names = sorted(n for n in os.listdir(self.opts.output) if G_FILE.match(n)
                       and int(G_FILE.match(n).group(1)) <= self.steps)
        for name in names[:-self.opts.keep]:
            os.remove(os.path.join(self.opts.output, name))

    def resume(self) -> bool:
        out = self.opts.output
        state = os.path.join(out, STATE_DIR)
        if not os.path.isdir(state) and os.path.isdir(state + ".old"):
            os.replace(state + ".old", state)  # a save cut between its two renames
        if not os.path.isdir(state):
            return False
        where = os.path.join(state, "trainer.json")
        try:
            with open(where, encoding="utf-8") as f:
                info = json.load(f)
            steps, epoch = int(info["steps"]), int(info["epoch"])
            elapsed = float(info.get("elapsed", 0.0))
            optim = info["optimizer"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{where}: not a vocos training state ({e})") from None
        g_file = os.path.join(out, f"g_{steps:08d}.safetensors")
        from sgpt.vocode.hifigan import load_state

        load_state(self.generator, read_tensors(g_file), g_file)
        tensors = read_tensors(os.path.join(state, "optimizer.safetensors"))
        try:
            self.optim.load_state_dict(_optimizer_state(tensors, optim))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{state}: optimizer state does not fit ({e})") from None
        self.steps, self.epoch, self.elapsed = steps, epoch, elapsed
        return True

    # -- one update ---------------------------------------------------------------------------

    def duration_loss(self, indices: list[int], examples: list[Example]) -> torch.Tensor:
        """MSE of predicted log(frames + 1) over every run of the batch's utterances."""
        if self.generator.dur_predictor is None:
            return torch.zeros((), device=self.device)
        for i in indices:  # each utterance's runs, found once
            if i not in self._runs:
                self._runs[i] = dedup(examples[i].codes.tolist())
        runs = [self._runs[i] for i in indices]
        lengths = torch.tensor([len(u) for u, _ in runs], device=self.device)
        units = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(u) for u, _ in runs], batch_first=True).to(self.device)
        counts = torch.tensor([c for _, run in runs for c in run], device=self.device)
        valid = valid_positions(lengths, units.shape[1])
        log_pred = self.generator.log_durations(units, lengths)[valid]
        return F.mse_loss(log_pred.float(), torch.log(counts.float() + 1))

    def step(self, sampler: SegmentSampler, examples: list[Example]) -> dict:
        h = self.cfg.extra
        index = self.steps
        self.epoch = sampler.epoch_of(index)
        lr = h["learning_rate"] * h["lr_decay"] ** self.epoch
        for group in self.optim.param_groups:
            group["lr"] = lr
        torch.manual_seed(self.seed * 1_000_003 + index)
        codes, y, speakers = sampler.batch(index)
        sources = None
        if h["duration_jitter"] and index % 2:
            rng = np.random.default_rng([self.seed, index])
            sources = [torch.from_numpy(jitter_runs(c.numpy(), h["duration_jitter"], rng))
                       for c in codes]
            codes = torch.nn.utils.rnn.pad_sequence(
                [c[i] for c, i in zip(codes, sources)], batch_first=True)
        codes, y, speakers = codes.to(self.device), y.to(self.device), speakers.to(self.device)
        lengths = torch.tensor([codes.shape[1]] * len(codes) if sources is None else
                               [len(i) for i in sources], device=self.device)
        g = self.generator
        with autocast(self.device, self.amp):
            x, lengths = g.frames(codes, lengths,
                                  speaker=speakers if g.speaker_embed is not None else None)
            y_hat, _ = g.decode(x, lengths)
        y_hat = y_hat.float()
        if sources is None:
            mel_error = F.l1_loss(self.mel(y_hat), self.mel(y))
            spectral = stft_loss(y, y_hat)
        else:
            mel_error, spectral = self.warped_losses(y, y_hat, sources)
        loss_dur = self.duration_loss(sampler.indices(index), examples)
        loss = (mel_error * h["mel_weight"] + spectral * h["stft_weight"]
                + loss_dur * h["dur_prediction_weight"])
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        self.steps += 1
        return {"step": index + 1, "epoch": self.epoch, "lr": lr, "loss": loss.item(),
                "mel_error": mel_error.item(), "loss_stft": spectral.item(),
                "loss_dur": loss_dur.item()}

    def warped_losses(self, y: torch.Tensor, y_hat: torch.Tensor, sources: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel L1 and log-magnitude L1 at the frame rate between what the generator made
        of jittered runs and the audio's frames warped the same way (``sources``), over
        each segment's own frames."""
        target_mel, target_mag = spectra(y, self.frame_mel)
        mel_error = magnitude_error = y.new_zeros(())
        for b, source in enumerate(sources):
            source = source.to(self.device)
            mel, magnitude = spectra(y_hat[b:b + 1, :len(source) * self.frame_mel.hop],
                                     self.frame_mel)
            mel_error = mel_error + F.l1_loss(mel[0], target_mel[b][:, source])
            magnitude_error = magnitude_error + F.l1_loss(magnitude[0], target_mag[b][:, source])
        return mel_error / len(sources), magnitude_error / len(sources)

    def describe(self, entry: dict) -> str:
        return (f"loss {entry['loss']:.3f} mel {entry['mel_error']:.3f} stft "
                f"{entry['loss_stft']:.3f} dur {entry['loss_dur']:.3f}")

    def start_from(self, path: str) -> str:
        """A new run's generator from another vocos run's newest (fine-tuning)."""
        from sgpt.vocode.hifigan import load_state

        g_file = newest_generator(path) if os.path.isdir(path) else path
        if g_file is None:
            raise CheckpointError(f"{path}: no g_XXXXXXXX.safetensors generator in directory")
        config = os.path.join(os.path.dirname(g_file), "config.json")
        if os.path.exists(config) and read_config(config).architecture() != \
                self.cfg.architecture():
            raise SgptError(f"{config}: its architecture differs from this run's config; "
                            "--init needs the same one")
        load_state(self.generator, read_tensors(g_file), g_file)
        return g_file
