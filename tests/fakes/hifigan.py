"""Fabricate unit HiFi-GAN checkpoints in the published layout, filled with random weights.

``g_XXXXXXXX`` = ``{"generator": state_dict}`` (weight-norm ``weight_g``/``weight_v`` keys, as
speech-resynthesis and fairseq write them) beside ``config.json``. The weights are random but
scaled so that the output is speech-loud (not the near-silence of HiFi-GAN's 0.01 init), and
the duration predictor predicts a few frames per unit, so parity checks compare real signals.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path

import torch

from sgpt.vocode.hifigan import MHUBERT_KM1000_CONFIG, HiFiGANConfig, UnitHiFiGAN, _WeightNorm

# The published architecture, shrunk: same rates and kernels (hop 320, 50 frames/s), narrow.
SMALL_CONFIG = {
    **copy.deepcopy(MHUBERT_KM1000_CONFIG),
    "upsample_initial_channel": 32,
    "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "num_embeddings": 100,
    "embedding_dim": 16,
    "model_in_dim": 16,
    "dur_predictor_params": {"encoder_embed_dim": 16, "var_pred_hidden_dim": 16,
                             "var_pred_kernel_size": 3, "var_pred_dropout": 0.5},
}


def published_config(**changes) -> dict:
    """The published mHuBERT-km1000 vocoder config, with ``changes``."""
    return {**copy.deepcopy(MHUBERT_KM1000_CONFIG), **changes}


def small_config(**changes) -> dict:
    return {**copy.deepcopy(SMALL_CONFIG), **changes}


def multispeaker(config: dict, num_speakers: int = 4) -> dict:
    """A config with a speaker embedding (fairseq's multispkr/num_speakers keys)."""
    return {**config, "multispkr": True, "num_speakers": num_speakers,
            "model_in_dim": 2 * config["embedding_dim"]}


def without_duration_predictor(config: dict) -> dict:
    config = dict(config)
    config.pop("dur_predictor_params", None)
    config.pop("dur_prediction_weight", None)
    return config


def random_generator(config: dict, seed: int = 0) -> UnitHiFiGAN:
    """A generator of ``config`` with loud random weights."""
    torch.manual_seed(seed)
    model = UnitHiFiGAN(HiFiGANConfig.from_dict(copy.deepcopy(config)))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _WeightNorm):
                m.weight_v.normal_()
                m.weight_g.uniform_(0.8, 1.6)
                if m.bias is not None:
                    m.bias.uniform_(-0.05, 0.05)
        model.dict.weight.normal_()
        if model.spkr is not None:
            model.spkr.weight.normal_()
        if model.dur_predictor is not None:
            model.dur_predictor.proj.bias.fill_(1.0)  # 1 to 8 frames a unit, 2.5 on average
    return model


def fabricate_vocoder(directory: Path, config: dict | None = None, seed: int = 0,
                      step: int = 500000) -> Path:
    """Write ``directory/g_{step:08d}`` and ``directory/config.json``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(config if config is not None else SMALL_CONFIG)
    model = random_generator(config, seed)
    torch.save({"generator": model.state_dict()}, directory / f"g_{step:08d}")
    (directory / "config.json").write_text(json.dumps(config, indent=4))
    return directory


@contextlib.contextmanager
def one_torch_thread():
    """One torch thread here and in the tools the tests start (OMP_NUM_THREADS): the tiny
    models gain nothing from more, and on a loaded machine two spinning OpenMP threads made
    a training step 8x slower (measured)."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if env is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = env
