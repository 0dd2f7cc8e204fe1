"""Speech to units: a dense encoder and a k-means quantizer, composed.

As textlesslib's SpeechEncoder: ``SpeechEncoder(dense, quantizer)`` returns aligned streams
(``units``, ``durations``, ``dense``) per utterance. The dense model is any module with
``forward(wavs [B, T], lengths [B]) -> (feats [B, F, D], feat_lengths [B])``, ``frame_rate``,
``dim``, ``name``, ``layer`` and ``source`` (``sgpt.units.hubert.HubertEncoder``,
``sgpt.units.mfcc.MfccEncoder``, ``sgpt.units.whisper_encoder.WhisperEncoder``). Batches are padded;
each utterance's result is the same as when it is encoded alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from sgpt.core.audio import MIN_SAMPLES
from sgpt.core.stream import dedup
from sgpt.units.encoders import MAX_CHUNK_SAMPLES, dense_model


def chunk_bounds(n_samples: int, max_chunk: int = MAX_CHUNK_SAMPLES) -> list[tuple[int, int]]:
    """Pieces of at most ``max_chunk`` samples; a tail too short to encode joins the last."""
    bounds = [(s, min(s + max_chunk, n_samples)) for s in range(0, n_samples, max_chunk)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_SAMPLES:
        tail = bounds.pop()
        bounds[-1] = (bounds[-1][0], tail[1])
    return bounds


def plan_batches(lengths: Sequence[int], max_samples: int) -> list[list[int]]:
    """Indices grouped so that each padded batch holds at most ``max_samples`` samples.

    Longest first, so padding stays small; an item longer than the bound goes alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_samples:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class SpeechEncoder(nn.Module):
    """Dense features -> k-means units -> (optionally) deduplicated units with durations."""

    def __init__(self, dense: nn.Module, quantizer: nn.Module | None = None,
                 dedup: bool = True, max_chunk: int = MAX_CHUNK_SAMPLES):
        super().__init__()
        self.dense = dense
        self.quantizer = quantizer
        self.dedup = dedup
        self.max_chunk = max_chunk
        if quantizer is not None:
            quantizer.check_dim(dense.dim, f"the {dense.name} encoder's features")
        # follows .to(): a weights-free dense model has no parameters to tell the device
        self.register_buffer("_where", torch.empty(0), persistent=False)

    @property
    def meta(self) -> dict:
        """What records' ``units_meta`` says of the units this encoder makes."""
        encoder = self.dense.name
        if self.dense.source != self.dense.name:
            encoder += f":{self.dense.source}"
        return {"encoder": encoder, "layer": self.dense.layer,
                "k": self.quantizer.k if self.quantizer is not None else None,
                "frame_rate": self.dense.frame_rate, "dedup": self.dedup}

    @property
    def device(self) -> torch.device:
        return self._where.device

    @torch.inference_mode()
    def features(self, waves: Sequence[np.ndarray], max_samples: int | None = None
                 ) -> list[torch.Tensor]:
        """Dense features [F, D] per waveform (16 kHz mono float32), in input order.

        Long waveforms are encoded in ``max_chunk`` pieces, as the reference does. Pieces
        are packed into padded batches of at most ``max_samples`` samples (default: one
        piece per batch).
        """
        pieces: list[tuple[int, np.ndarray]] = []
        for w, wave in enumerate(waves):
            pieces += [(w, wave[a:b]) for a, b in chunk_bounds(len(wave), self.max_chunk)]
        lengths = [len(p) for _, p in pieces]
        out: list[torch.Tensor | None] = [None] * len(pieces)
        device = self.device
        for batch in plan_batches(lengths, max_samples or 0):
            wavs = torch.zeros(len(batch), lengths[batch[0]])
            for row, i in enumerate(batch):
                wavs[row, : lengths[i]] = torch.from_numpy(pieces[i][1])
            lens = torch.tensor([lengths[i] for i in batch])
            feats, feat_lens = self.dense(wavs.to(device), lens.to(device))
            for row, i in enumerate(batch):
                out[i] = feats[row, : int(feat_lens[row])].float()
        per_wave: list[list[torch.Tensor]] = [[] for _ in waves]
        for (w, _), feats in zip(pieces, out):
            per_wave[w].append(feats)
        return [torch.cat(f) for f in per_wave]

    @torch.inference_mode()
    def forward(self, waves: Sequence[np.ndarray], max_samples: int | None = None,
                return_dense: bool = False) -> list[dict]:
        """``{"units", "durations"?, "dense"?}`` per waveform, in input order."""
        if self.quantizer is None:
            raise ValueError("this SpeechEncoder has no quantizer")
        results = []
        for feats in self.features(waves, max_samples):
            units = self.quantizer(feats).tolist()
            result: dict = {"units": units}
            if self.dedup:
                result["units"], result["durations"] = dedup(units)
            if return_dense:
                result["dense"] = feats
            results.append(result)
        return results


def load_speech_encoder(encoder: str, kmeans: str | None, checkpoint: str | None = None,
                        layer: int = 11, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32,
                        dedup: bool = True) -> SpeechEncoder:
    """A ready SpeechEncoder on ``device``: the dense model named ``encoder`` (an entry of
    ``sgpt.units.encoders.DENSE_MODELS``) in ``dtype``, k-means in float32.

    ``dtype`` is a torch dtype or a ``--dtype`` name (``auto`` resolved for ``device``; the
    whisper encoder reads ``auto`` as int8 on CPU). Long audio is cut in pieces of the
    encoder's ``max_chunk`` samples (fairseq's 100 s when it names none).
    """
    from sgpt.units.kmeans import KMeansQuantizer, check_learnt_on

    dense = dense_model(encoder).load(checkpoint, layer, device, dtype)
    quantizer = None
    if kmeans is not None:
        check_learnt_on(kmeans, dense.name, dense.layer)
        quantizer = KMeansQuantizer.from_file(kmeans)
    max_chunk = getattr(dense, "max_chunk", MAX_CHUNK_SAMPLES)
    return SpeechEncoder(dense, quantizer, dedup=dedup, max_chunk=max_chunk).to(device).eval()
