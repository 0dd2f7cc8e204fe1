"""The dense encoders, chosen by name: one table that ``--encoder``'s choices, the embedded
default's check and every fallback read (textlesslib's ``DENSE_MODELS`` is the model).

An entry names the function that loads the encoder, as ``module:function``, imported only
when the encoder is used (no tool imports transformers or CTranslate2 for an encoder it
does not run), and says in a few words what the encoder is. The function is
called as ``load(checkpoint, layer, device, dtype)`` (``checkpoint`` None when not given,
``dtype`` a torch dtype or a ``--dtype`` name) and returns the dense model on ``device``:
``forward(wavs [B, T], lengths [B]) -> (feats [B, F, D], feat_lengths [B])``, with ``name``,
``dim``, ``frame_rate``, ``layer`` and ``source``, and ``max_chunk`` (samples) if it takes
pieces shorter than MAX_CHUNK_SAMPLES. A new encoder is one module with such a function and
one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from sgpt.core.errors import CheckpointError

# fairseq's HuBERT feature reader encodes long files in pieces of this many samples (100 s).
MAX_CHUNK_SAMPLES = 1_600_000


@dataclass(frozen=True)
class DenseModel:
    loader: str                     # "module:function", called (checkpoint, layer, device, dtype)
    help: str                       # what it is, for --encoder's help

    def load(self, checkpoint, layer, device, dtype):
        module, _, function = self.loader.partition(":")
        return getattr(importlib.import_module(module), function)(checkpoint, layer, device,
                                                                  dtype)


DENSE_MODELS: dict[str, DenseModel] = {
    "hubert": DenseModel("sgpt.units.hubert:load",
                         "HuBERT/mHuBERT: --checkpoint names a fairseq .pt or a transformers "
                         "HubertModel directory, --layer the layer clustered"),
    "mfcc": DenseModel("sgpt.units.mfcc:load", "weights-free MFCC + deltas, 50 frames/s"),
    "whisper": DenseModel("sgpt.units.whisper_encoder:load",
                          "Whisper base's encoder via CTranslate2 on each utterance's own "
                          "length, 512 dims, 50 frames/s; --checkpoint may name another "
                          "CTranslate2 Whisper directory"),
    "whisper-padded": DenseModel("sgpt.units.whisper_encoder:load_padded",
                                 "the same on every utterance padded to 30 s, as Whisper "
                                 "transcribes (sgpt 0.1's whisper: the embedded default's "
                                 "units); other features, 10x slower"),
}
# what --checkpoint alone implies: SpeechGPT's units are mHuBERT's
CHECKPOINT_ENCODER = "hubert"


def dense_model(name: str) -> DenseModel:
    try:
        return DENSE_MODELS[name]
    except KeyError:
        raise CheckpointError(f"unknown encoder {name!r} (use {', '.join(DENSE_MODELS)})"
                              ) from None


def encoder_help() -> str:
    """``--encoder``'s help: each encoder and what it is."""
    return "Dense features: " + "; ".join(f"{name} ({entry.help})"
                                          for name, entry in DENSE_MODELS.items()) + "."
