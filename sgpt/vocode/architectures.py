"""The vocoder architectures sgpt-vocode runs, chosen by the ``arch`` key of the vocoder's
config.json (absent: ``hifigan``, the published unit HiFi-GAN layout): one table that
``load_vocoder`` reads.

An entry names the function that loads a vocoder of that architecture, as
``module:function``, imported only when it is used; it is called as
``load(path, config, device, dtype)`` (``path``: the ``--vocoder`` directory or file,
``config``: ``--config`` or None) and returns a module that keeps this contract, which is all
that sgpt.vocode.vocoder.Vocoder uses:

    k                       unit ids it knows: 0..k-1
    sample_rate             of the waveforms it makes
    hop                     output samples per frame
    num_speakers            speakers it can speak as (None: one, and no speaker input)
    has_duration_predictor  whether predict_durations works
    context                 frames on either side that can change one output sample, or None
                            when the output is not exactly hop samples a frame (no chunking)
    device                  where its weights are
    predict_durations(units [B, U], lengths [B]) -> frames per unit [B, U]
    frames(units [B, U], lengths [B], durations [B, U] | None, speaker [B] | None)
        -> (conditioning frames [B, C, T], frame lengths [B])
    decode(frames [B, C, T], lengths [B]) -> (waveforms [B, N], lengths [B])

Errors are CheckpointError naming the file. A new architecture is one module with such a
``load`` and one entry here.

The config.json that ``sgpt-vocode train`` writes opens with the directory's format and
version (``VOCODER_FORMAT``); one without them (the published layout, or written by an sgpt
before versions) is version 1.
"""

from __future__ import annotations

import importlib
import json
import os

import torch

from sgpt.core.errors import CheckpointError
from sgpt.core.formats import FileFormat

VOCODERS: dict[str, str] = {
    "hifigan": "sgpt.vocode.hifigan:load",
    "vocos": "sgpt.vocode.vocos:load",
}
# The module that trains an architecture (``sgpt-vocode train``): it has TrainOptions,
# training_config(opts, config_file), make_example(record, cfg) and
# Trainer(cfg, opts, device, amp, info).train(examples, advance).
TRAINERS: dict[str, str] = {
    "hifigan": "sgpt.vocode.hifigan_train",
    "vocos": "sgpt.vocode.vocos_train",
}
DEFAULT_ARCH = "hifigan"  # what a config.json without "arch" is: the published layout
VOCODER_FORMAT = FileFormat("sgpt-vocoder", "a vocoder config",
                            "train it again with sgpt-vocode train", unnamed=True)


def config_path(path: str, config: str | None = None) -> str:
    """The config.json of ``--vocoder PATH [--config FILE]``: FILE, else beside PATH's
    checkpoints (in the directory PATH, or beside the file PATH)."""
    if config is not None:
        return config
    where = path if os.path.isdir(path) else os.path.dirname(path) or "."
    return os.path.join(where, "config.json")


def given_config(output: str, config: str | None, init: str | None) -> str | None:
    """The config file a training run into ``output`` is given: ``config``, else, for a new
    run from ``--init``, that vocoder's (beside its checkpoints); None: the run's own
    ``output/config.json`` (a resume) or the trainer's default."""
    if config is None and init is not None and not os.path.exists(
            os.path.join(output, "config.json")):
        return config_path(init)
    return config


def vocoder_arch(path: str, config: str | None = None) -> str:
    """The architecture a vocoder's config.json names (``hifigan`` when it names none or
    cannot be read: that loader names what is wrong with it)."""
    try:
        with open(config_path(path, config), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError):
        return DEFAULT_ARCH
    if not isinstance(data, dict):
        return DEFAULT_ARCH
    VOCODER_FORMAT.check(config_path(path, config), data)
    arch = data.get("arch", DEFAULT_ARCH)
    if arch not in VOCODERS:
        raise CheckpointError(f"{config_path(path, config)}: unknown vocoder arch {arch!r} "
                              f"(use {', '.join(VOCODERS)})")
    return arch


def load_vocoder(path: str, config: str | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
    """The vocoder at ``path``, in eval mode on ``device`` in ``dtype``, by its arch."""
    module, _, function = VOCODERS[vocoder_arch(path, config)].partition(":")
    return getattr(importlib.import_module(module), function)(path, config, device, dtype)
