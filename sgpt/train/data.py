"""Training data for sgpt-train: packed shards, checked against the stage and tokenizer, and
cut into batches in an order that depends only on the seed and the step.

The order: the sequences (of every ``--data`` directory, in the order given) minus a held-out
split are permuted once per epoch by a generator seeded with ``(seed, epoch)``; optimizer step
``s`` of an epoch takes the ``global_batch`` sequences ``perm[s*G:(s+1)*G]`` (the last
partial batch of an epoch is dropped), and each process takes its micro-batches out of that
slice. A resumed run, or a run on another number of processes with the same global batch,
sees the same sequences in the same steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sgpt.core.errors import SgptError
from sgpt.lm.tokenizer import SpeechTokenizer, fingerprint
from sgpt.tokenize.pack import PackedDataset, PackError

# what each sgpt-train stage trains on, as sgpt-tokenize pack's header names it
PACK_STAGE = {"pretrain": "1", "cross-modal": "2", "chain-of-modality": "3"}
STAGE_NAME = {"1": "pretrain (stage 1)", "2": "cross-modal (stage 2)",
              "3": "chain-of-modality (stage 3)"}
TA_MARK = "[ta]"  # every chain-of-modality answer has it; no cross-modal one does
SNIFF = 16        # sequences decoded to tell stage 2 from stage 3 in an auto-staged pack


class DataError(SgptError):
    """Training data that cannot be used for this run."""


class Sequences:
    """The packed sequences of several directories, as one indexable collection."""

    def __init__(self, paths: list[str]):
        if not paths:
            raise DataError("no --data given")
        self.sets = []
        for p in paths:
            if not Path(p).exists():
                raise DataError(f"{p}: no such directory of packed shards")
            if not Path(p).is_dir():
                raise DataError(f"{p}: a file, not a directory of packed shards (make one "
                                "with sgpt-tokenize pack)")
            try:
                self.sets.append(PackedDataset(p))
            except PackError as e:
                raise DataError(str(e)) from None
        first = self.sets[0]
        for p, ds in zip(paths[1:], self.sets[1:]):
            if ds.tokenizer.get("fingerprint") != first.tokenizer.get("fingerprint"):
                raise DataError(f"{p}: built with another tokenizer than {paths[0]}")
            if ds.stage != first.stage:
                raise DataError(f"{p}: stage-{ds.stage} data, {paths[0]} is stage "
                                f"{first.stage}")
        self.paths = list(paths)
        self.stage = first.stage
        self.tokenizer = first.tokenizer
        self._starts = np.cumsum([0, *(len(ds) for ds in self.sets)])
        lengths = []
        trained = []
        for ds in self.sets:
            for _, mask, offsets, _ in ds._parts:
                off = np.asarray(offsets)
                lengths.append(np.diff(off))
                m = np.asarray(mask, dtype=np.int64)
                csum = np.concatenate([[0], np.cumsum(m)])
                # trained targets: mask over positions 1.. of each sequence
                firsts = m[off[:-1]] if len(off) > 1 else np.zeros(0, np.int64)
                trained.append(csum[off[1:]] - csum[off[:-1]] - firsts)
        # the source of every sequence: its --data directory (a directory given twice is
        # one source, seen twice as often)
        names = {p: i for i, p in enumerate(dict.fromkeys(str(Path(p).resolve())
                                                           for p in paths))}
        self.source = np.concatenate([np.full(len(ds), names[str(Path(p).resolve())])
                                      for p, ds in zip(paths, self.sets)]).astype(np.int64)
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        self.trained = np.concatenate(trained) if trained else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        d = int(np.searchsorted(self._starts, i, side="right") - 1)
        return self.sets[d][i - int(self._starts[d])]


def check_tokenizer(seqs: Sequences, tokenizer: str | None) -> str:
    """The tokenizer directory to train with: ``tokenizer``, else the one the data names;
    it must be the one the data was packed with (same files, by fingerprint)."""
    path = tokenizer or seqs.tokenizer.get("path")
    if not path:
        raise DataError(f"{seqs.paths[0]}: the header names no tokenizer directory: give "
                        "--tokenizer")
    if not Path(path).is_dir():
        if tokenizer:
            raise DataError(f"{path}: no such tokenizer directory")
        raise DataError(f"{seqs.paths[0]}: the tokenizer it was packed with, {path}, is not "
                        "there (moved?): give --tokenizer DIR, that tokenizer or a copy")
    if fingerprint(path) != seqs.tokenizer.get("fingerprint"):
        raise DataError(f"{seqs.paths[0]}: packed with another tokenizer than {path} (its "
                        "files differ): pack the data again with this tokenizer, or train "
                        "with the one the data names")
    return path


def check_stage(seqs: Sequences, stage: str, tok: SpeechTokenizer) -> None:
    """Refuse data of another stage. A pack made with ``--stage auto`` calls all
    instruction data stage 2: its chain-of-modality records are told by their ``[ta]``."""
    want = PACK_STAGE[stage]
    have = seqs.stage
    if have == "2" and want in ("2", "3"):
        sample = range(0, len(seqs), max(1, len(seqs) // SNIFF))
        has_ta = any(TA_MARK in tok.decode(seqs[i][0]) for i in sample)
        have = "3" if has_ta else "2"
    if have != want:
        raise DataError(f"{seqs.paths[0]}: {STAGE_NAME.get(have, have)} data, but "
                        f"--stage {stage} trains on {STAGE_NAME[want]} data")


def split(n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a seeded random ``eval_fraction`` of ``n`` is held out."""
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    n_eval = min(n - 1, math.ceil(n * eval_fraction)) if eval_fraction > 0 else 0
    perm = np.random.default_rng([seed, 0x5E1D]).permutation(n)
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


@dataclass
class Layout:
    """How a global batch is spread over processes and micro-batches."""

    batch_size: int   # sequences per micro-batch, per process
    grad_accum: int   # micro-batches per optimizer step, per process
    world: int        # processes

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world


def epoch_order(train: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    return train[np.random.default_rng([seed, epoch]).permutation(len(train))]


def step_indices(train: np.ndarray, layout: Layout, seed: int, step: int) -> np.ndarray:
    """The global batch (sequence indices) of optimizer step ``step`` (0-based, global)."""
    per_epoch = len(train) // layout.global_batch
    epoch, s = divmod(step, per_epoch)
    order = epoch_order(train, seed, epoch)
    return order[s * layout.global_batch:(s + 1) * layout.global_batch]


def micro_batches(indices: np.ndarray, layout: Layout, rank: int) -> list[np.ndarray]:
    """This process's micro-batches of a global batch."""
    b, w = layout.batch_size, layout.world
    return [indices[(a * w + rank) * b:(a * w + rank + 1) * b]
            for a in range(layout.grad_accum)]


def collate(seqs: Sequences, indices, pad_id: int, max_length: int | None = None
            ) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100: not trained;
    label i is the token at i, predicted from position i-1)."""
    items = [seqs[int(i)] for i in indices]
    if max_length:
        items = [(ids[:max_length], mask[:max_length]) for ids, mask in items]
    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, (ids, mask) in enumerate(items):
        t = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        m = torch.from_numpy(np.asarray(mask, dtype=np.bool_))
        input_ids[row, :len(t)] = t
        attention[row, :len(t)] = 1
        labels[row, :len(t)] = torch.where(m, t, torch.full_like(t, -100))
    labels[:, 0] = -100  # nothing predicts the first token
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def trained_counts(seqs: Sequences, indices, max_length: int | None = None) -> np.ndarray:
    """How many targets each of a set of sequences has."""
    if not max_length:
        return seqs.trained[np.asarray(indices, dtype=np.int64)]
    return np.array([int(collate(seqs, [i], 0, max_length)["labels"].ne(-100).sum())
                     for i in indices], dtype=np.int64)


def trained_tokens(seqs: Sequences, indices, max_length: int | None = None) -> int:
    """How many targets a set of sequences has."""
    return int(trained_counts(seqs, indices, max_length).sum())


LOSS_NORMS = ("token", "data")


def target_weights(seqs: Sequences, indices, norm: str, max_length: int | None = None
                   ) -> np.ndarray:
    """The weight of each target of each sequence of a global batch in the step's loss.

    ``token``: every target weighs the same (the loss is the mean over the batch's targets).
    ``data``: each source's targets are averaged apart, and each source weighs its share of
    the batch's sequences: a source whose records carry few targets (ASR: a short
    transcript) counts as much per record as one whose records carry many (TTS: a unit
    sequence), so the mix of --data directories sets the mix of tasks."""
    indices = np.asarray(indices, dtype=np.int64)
    counts = trained_counts(seqs, indices, max_length).astype(np.float64)
    if norm == "token":
        return np.full(len(indices), 1.0 / max(1.0, counts.sum()))
    source = seqs.source[indices]
    weights = np.zeros(len(indices))
    for d in np.unique(source):
        mine = source == d
        weights[mine] = mine.sum() / len(indices) / max(1.0, counts[mine].sum())
    return weights


def batch_tokens(seqs: Sequences, indices, max_length: int | None = None) -> int:
    lengths = seqs.lengths[np.asarray(indices, dtype=np.int64)]
    return int(np.minimum(lengths, max_length).sum() if max_length else lengths.sum())
