"""Records to waveforms with a unit vocoder: checks, durations, batches and chunks.

``Vocoder.prepare(record)`` turns a record into a ``Request`` (or raises RecordError naming
it); ``Vocoder.__call__(requests)`` vocodes many at once. Several utterances share one
forward pass, each output trimmed to its own length, with the same result as one at a
time. With ``chunk``, sequences longer than ``chunk`` frames are cut into pieces of
``chunk`` frames, each vocoded with the generator's receptive field of context on both sides
and trimmed back to its own frames, so the pieces join into what whole-sequence vocoding
gives (up to float rounding): there is no seam to hear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sgpt.core.errors import RecordError, SgptError
from sgpt.core.stream import check_durations, check_units, is_deduplicated

DUR_MODES = ("auto", "on", "off")


@dataclass
class Request:
    """One utterance to vocode."""

    id: str
    units: list[int]
    durations: list[int] | None  # frames per unit, from the record
    predict: bool                # predict durations with the vocoder's duration predictor


@dataclass
class _Piece:
    """Frames [C, T] of one utterance (or one chunk of it), and what to keep of its output."""

    index: int        # which request
    frames: torch.Tensor
    keep: slice       # samples of the output that belong to the utterance


# The longest utterance a record may ask for (sgpt-vocode --max-seconds): refused by name
# before anything is allocated, not an out-of-memory crash that loses the run.
MAX_SECONDS = 600.0

# A batch takes a further (longer) item only while padding stays under this share of the
# real frames: the generator's cost is per padded sample, so a batch of one long and seven
# short utterances would cost more than vocoding them apart.
MAX_PADDING = 0.25


class Vocoder:
    """What sgpt-vocode does with a vocoder of any architecture (the contract in
    sgpt.vocode.architectures)."""

    def __init__(self, model, dur_prediction: str = "auto",
                 speaker: int | None = None, batch_size: int = 8, chunk: int | None = None,
                 max_padding: float = MAX_PADDING, max_seconds: float = MAX_SECONDS):
        if dur_prediction not in DUR_MODES:
            raise ValueError(f"dur_prediction must be one of {DUR_MODES}")
        speakers = model.num_speakers
        if dur_prediction == "on" and not model.has_duration_predictor:
            raise SgptError("--dur-prediction on: this vocoder has no duration predictor")
        if speaker is not None and speakers is None:
            raise SgptError("--speaker: this vocoder has one speaker")
        if speaker is not None and not 0 <= speaker < speakers:
            raise SgptError(f"--speaker {speaker}: this vocoder has speakers 0 to "
                            f"{speakers - 1}")
        if chunk is not None and model.context is None:
            raise SgptError("--chunk: this vocoder's output is not exactly hop samples a "
                            "frame (for a unit HiFi-GAN: upsample kernels and rates must "
                            "differ by even numbers)")
        self.model = model
        self.dur_prediction = dur_prediction
        self.speaker = 0 if speakers is not None and speaker is None else speaker
        self.batch_size = max(1, batch_size)
        self.max_padding = max_padding
        self.chunk = chunk
        self.context = model.context
        self.sample_rate = model.sample_rate
        self.max_seconds = max_seconds
        self.max_frames = int(max_seconds * model.sample_rate / model.hop)
        self.warned_no_predictor = False

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prepare(self, record: dict) -> Request:
        """Check a record's units (and durations) against the vocoder; RecordError if bad."""
        rid = record["id"]
        units = record.get("units")
        if units is None:
            raise RecordError(rid, "no 'units' to vocode")
        check_units(record, self.model.k, "this vocoder")
        durations = check_durations(record)
        # at least a frame a unit; predicted durations are the predictor's (about 2-3 a unit)
        frames = sum(durations) if durations is not None and self.dur_prediction != "on" \
            else len(units)
        if frames > self.max_frames:
            seconds = frames * self.model.hop / self.sample_rate
            raise RecordError(rid, f"{seconds:,.0f} s of audio asked for ({frames:,} frames): "
                                   f"over --max-seconds {self.max_seconds:g}")
        if self.dur_prediction == "on":
            return Request(rid, units, None, True)
        if durations is not None:
            return Request(rid, units, durations, False)
        predict = (self.dur_prediction == "auto" and is_deduplicated(record)
                   and self.model.has_duration_predictor)
        return Request(rid, units, None, predict)

    def needs_one_frame_warning(self, request: Request, record: dict) -> bool:
        """Deduplicated units vocoded one frame each (no durations, no predictor): once."""
        if (request.durations is None and not request.predict and is_deduplicated(record)
                and self.dur_prediction == "auto" and not self.warned_no_predictor):
            self.warned_no_predictor = True
            return True
        return False

    @torch.no_grad()
    def frames(self, requests: list[Request]) -> list[torch.Tensor]:
        """Conditioning frames [C, T] of each request (durations applied)."""
        out: list[torch.Tensor] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start:start + self.batch_size]
            lengths = torch.tensor([len(r.units) for r in batch], device=self.device)
            units = torch.zeros(len(batch), int(lengths.max()), dtype=torch.long,
                                device=self.device)
            durations = torch.zeros_like(units)
            for i, r in enumerate(batch):
                units[i, :len(r.units)] = torch.tensor(r.units)
                if r.durations is not None:
                    durations[i, :len(r.units)] = torch.tensor(r.durations)
                else:
                    durations[i, :len(r.units)] = 1
            predict = [i for i, r in enumerate(batch) if r.predict]
            if predict:
                sel = torch.tensor(predict, device=self.device)
                durations[sel] = self.model.predict_durations(units[sel], lengths[sel])
            speaker = None
            if self.speaker is not None:
                speaker = torch.full((len(batch),), self.speaker, device=self.device)
            x, frame_lengths = self.model.frames(units, lengths, durations, speaker)
            out += [x[i, :, :n] for i, n in enumerate(frame_lengths.tolist())]
        return out

    def pieces(self, frames: list[torch.Tensor]) -> list[_Piece]:
        """Whole utterances, or chunks of ``chunk`` frames with ``context`` on either side."""
        hop = self.model.hop
        pieces = []
        for index, x in enumerate(frames):
            total = x.shape[-1]
            if self.chunk is None or total <= self.chunk:
                pieces.append(_Piece(index, x, slice(None)))
                continue
            for start in range(0, total, self.chunk):
                end = min(start + self.chunk, total)
                lo, hi = max(0, start - self.context), min(total, end + self.context)
                pieces.append(_Piece(index, x[:, lo:hi],
                                     slice((start - lo) * hop, (end - lo) * hop)))
        return pieces

    @torch.no_grad()
    def decode(self, pieces: list[_Piece]) -> list[np.ndarray]:
        """Waveform of each piece (trimmed to what it keeps), batch by batch."""
        out = []
        for batch in padded_batches(pieces, self.batch_size, lambda p: p.frames.shape[-1],
                                    self.max_padding):
            lengths = torch.tensor([p.frames.shape[-1] for p in batch], device=self.device)
            x = torch.nn.utils.rnn.pad_sequence([p.frames.T for p in batch], batch_first=True)
            wave, wave_lengths = self.model.decode(x.transpose(1, 2), lengths)
            wave = wave.float().cpu().numpy()
            for i, (p, n) in enumerate(zip(batch, wave_lengths.tolist())):
                out.append(wave[i, :n][p.keep])
        return out

    def __call__(self, requests: list[Request]) -> list[np.ndarray]:
        """Waveforms (float32, at ``sample_rate``) of the requests, in order.

        Batches are formed in order of length, and cut where more than a quarter of a batch
        would be padding.
        """
        pieces = self.pieces(_in_order(self.frames, requests, lambda r: len(r.units)))
        waves = _in_order(self.decode, pieces, lambda p: p.frames.shape[-1])
        joined: list[list[np.ndarray]] = [[] for _ in requests]
        for p, w in zip(pieces, waves):
            joined[p.index].append(w)
        return [np.concatenate(parts).astype(np.float32, copy=False) for parts in joined]


def padded_batches(items: list, batch_size: int, length,
                   max_padding: float = MAX_PADDING) -> list[list]:
    """Consecutive runs of ``items`` (sorted by ``length``, shortest first) of at most
    ``batch_size``, cut wherever padding to the longest would exceed ``max_padding``."""
    batches: list[list] = []
    batch: list = []
    total = 0
    for item in items:
        n = length(item)
        if batch and (len(batch) == batch_size
                      or (len(batch) + 1) * n > (1 + max_padding) * (total + n)):
            batches.append(batch)
            batch, total = [], 0
        batch.append(item)
        total += n
    if batch:
        batches.append(batch)
    return batches


def _in_order(fn, items: list, key) -> list:
    """``fn(items)`` computed on the items sorted by ``key``, returned in the items' order."""
    order = sorted(range(len(items)), key=lambda i: key(items[i]))
    results = fn([items[i] for i in order])
    out: list = [None] * len(items)
    for position, i in enumerate(order):
        out[i] = results[position]
    return out
