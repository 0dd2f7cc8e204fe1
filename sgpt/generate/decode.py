"""Talking to a SpeechGPT model: prompts from records, batched decoding, answer records.

``build_prompt`` turns a record into the token ids the reference feeds its model (the
system prefix, ``[Human]: {question} <eoh>. [SpeechGPT]: ``; asr and tts requests in stage
2's format, ``[Human]: {instruction} This is input: {input}<eoh> [SpeechGPT]: ``), encoded
as the tokenizer encodes the whole string). ``Generator`` decodes many prompts at once and
yields each as soon as it is finished:

* the system prefix is the same for every chat/asr/tts prompt: its key/value cache is
  computed once and copied into every batch, so only the question is run through the model;
* a batch is laid out ``[prefix][left padding][question]``; position ids count real tokens
  only, so each row computes what it would alone;
* each row stops on its own (``<eoa>``, EOS, ``<eosp>`` for unit continuation, its token
  budget, the model's context) and leaves the batch at once; a waiting prompt takes its
  place (continuous batching), so the batch stays full however unequal the answers are;
* prompts are read ahead on a thread: a record that arrives on a slow pipe joins the
  running batch at the next step, and its answer is written when it is done;
* sampling (temperature, top-k, top-p, in that order, as transformers applies them) draws
  from a generator seeded by ``(seed, record id)``, so a record's answer depends on the
  seed and the record, not on the batch it shares or the order of the input.

``answer_record`` turns a finished prompt into the output record: the answer in ``units`` /
``text`` (so it pipes into sgpt-vocode), ``transcript``, ``raw``, and ``prompt`` (the input
record minus its id).
"""

from __future__ import annotations

import copy
import hashlib
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from sgpt.core import stream
from sgpt.core.errors import RecordError
from sgpt.lm.answers import Answer, parse_answer
from sgpt.lm.models import cache_keyword, forward_keywords, output_cache
from sgpt.lm.prompts import (
    ASR_INSTRUCTIONS,
    EOA,
    EOSP,
    SOSP,
    TTS_INSTRUCTIONS,
    check_text,
    cross_modal_prompt,
    inference_prompt,
    task_question,
    unit_token,
    units_text,
)
from sgpt.lm.tokenizer import SpeechTokenizer

TASKS = ("chat", "asr", "tts", "continue")
DEFAULT_INSTRUCTIONS = {"asr": ASR_INSTRUCTIONS[0], "tts": TTS_INSTRUCTIONS[0]}
# Keys that describe the question: they go into "prompt" only, never to the answer's top level.
QUESTION_KEYS = ("units", "durations", "text", "audio", "units_meta", "task", "instruction",
                 "transcript", "raw", "prompt", "seconds", "source_audio")


@dataclass
class Sampling:
    """Decoding settings; the defaults are the reference's."""

    greedy: bool = False
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 50
    max_new_tokens: int = 2048
    min_new_tokens: int = 10
    seed: int = 0

    def check(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (use greedy decoding instead)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0 or self.max_new_tokens < 1 or self.min_new_tokens < 0:
            raise ValueError("top_k and min_new_tokens must be >= 0, max_new_tokens >= 1")


@dataclass
class Prompt:
    """One record's question, as token ids."""

    record: dict
    task: str
    ids: list[int]
    spoken: bool = False          # the question holds speech (the answer starts with its
    #                               transcript)
    notes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.record["id"]


@dataclass
class Result:
    """A finished prompt: the new token ids and why decoding stopped."""

    prompt: Prompt
    new_ids: list[int]
    stop: str                     # eoa, eos, eosp, length, context


# --- prompts ------------------------------------------------------------------------------

def question_units(record: dict, k: int) -> list[int] | None:
    """The record's units checked against the model's k, deduplicated (merged here if they
    are not); None when it has none."""
    if not record.get("units"):
        return None
    stream.check_units(record, k, "the model's tokenizer")
    return stream.heard_units(record)


def prompt_text(record: dict, k: int, default_task: str = "chat",
                instructions: dict | None = None) -> tuple[str, str, bool]:
    """``(task, prompt text, spoken)`` of a record; RecordError naming it if it is bad.

    * chat: ``text`` (a text question), ``units`` (a spoken one), or both (``text`` is an
      instruction about the speech: ``{text} This is input: <sosp>…<eosp>``);
    * asr: ``units``, with the record's ``instruction`` or the default one;
    * tts: ``text``, with the record's ``instruction`` or the default one; both in the
      format stage 2 trains them in (``cross_modal_prompt``), not the chat template: a model
      trained on little data answers a chat-format request as a chat (chat with ``text`` =
      the instruction gives that request);
    * continue: ``units``; the prompt is ``<sosp><u>…`` left open (stage-1 models).
    """
    rid = record["id"]
    task = record.get("task", default_task)
    if task not in TASKS:
        raise RecordError(rid, f"unknown task {task!r} (use {', '.join(TASKS)})")
    units = question_units(record, k)
    has_text = "text" in record
    instructions = {**DEFAULT_INSTRUCTIONS, **(instructions or {})}
    if task in ("asr", "tts"):
        instruction = record.get("instruction", instructions[task])
        instruction = check_text(instruction, "instruction", rid)
    if task == "chat":
        if units is None and (not has_text or not str(record["text"]).strip()):
            raise RecordError(rid, "nothing to answer: no 'text' and no 'units'")
        if units is None:
            return task, inference_prompt(check_text(record["text"], "text", rid)), False
        if has_text:
            question = task_question(check_text(record["text"], "text", rid),
                                     units_text(units))
        else:
            question = units_text(units)
        return task, inference_prompt(question), True
    if task == "asr":
        if units is None:
            raise RecordError(rid, "task asr needs 'units' (a non-empty list)")
        return task, cross_modal_prompt(instruction, units_text(units)), True
    if task == "tts":
        if not has_text:
            raise RecordError(rid, "task tts needs 'text'")
        text = check_text(record["text"], "text", rid)
        return task, cross_modal_prompt(instruction, text), False
    if units is None:
        raise RecordError(rid, "task continue needs 'units' (a non-empty list)")
    return task, SOSP + "".join(unit_token(u) for u in units), True


def build_prompt(record: dict, tokenizer: SpeechTokenizer, max_length: int | None = None,
                 truncate: bool = False, default_task: str = "chat",
                 instructions: dict | None = None, room: int = 1) -> Prompt:
    """The record's prompt as token ids (exactly the tokenizer's ids of the whole string).

    ``max_length``: the model's context; a prompt must leave ``room`` tokens to generate.
    A longer one is an error, unless ``truncate``: then the question's units are cut from
    their end until it fits (noted in ``Prompt.notes``); text is never cut.
    """
    task, text, spoken = prompt_text(record, tokenizer.k, default_task, instructions)
    ids = tokenizer.encode(text)
    notes: list[str] = []
    if max_length is not None and len(ids) + room > max_length:
        units = question_units(record, tokenizer.k)
        if not truncate or not units:
            raise RecordError(record["id"], f"prompt of {len(ids)} tokens leaves no room in "
                                            f"the model's context of {max_length} tokens"
                              + ("" if truncate or not units else
                                 " (--truncate cuts the question's units to fit)"))
        over = len(ids) + room - max_length
        keep = len(units) - over
        if keep < 1:
            raise RecordError(record["id"], "prompt does not fit the model's context even "
                                            "with its units cut")
        cut = {**record, "units": units[:keep]}
        cut.pop("durations", None)
        task, text, spoken = prompt_text(cut, tokenizer.k, default_task, instructions)
        ids = tokenizer.encode(text)
        notes.append(f"question truncated to its first {keep} of {len(units)} units")
    return Prompt(record, task, ids, spoken, notes)


# --- decoding -----------------------------------------------------------------------------

def row_seed(seed: int, record_id: str) -> int:
    data = f"{seed}\0{record_id}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") >> 1


def _common_prefix(a: list[int], b: list[int]) -> list[int]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def system_prefix_ids(tokenizer: SpeechTokenizer) -> list[int]:
    """The ids every inference prompt starts with (BOS, the system prefix, ``[Human]``…).

    Found as the common start of prompts with different questions, since an added token
    may take whitespace from the text before it (the prefix's last newline, here).
    """
    probes = [inference_prompt(q) for q in ("Hello", units_text([0]), "1 2 3")]
    ids = [tokenizer.encode(p) for p in probes]
    common = ids[0]
    for other in ids[1:]:
        common = _common_prefix(common, other)
    return common[:-1]  # keep the last shared token out: it may merge with a question


@dataclass
class _Row:
    prompt: Prompt
    generator: torch.Generator | None
    budget: int
    new_ids: list[int] = field(default_factory=list)


@dataclass
class _Running:
    """The rows being decoded: their cache [B, heads, T, dim], attention mask [B, T] (0 for
    padding), the position of each row's last token, and the logits of its next token."""

    rows: list[_Row]
    cache: object
    mask: torch.Tensor
    last_pos: torch.Tensor
    logits: torch.Tensor


class _Feed:
    """Prompts read ahead on a thread, so that a slow producer (a pipe that sends a record
    now and then) never holds up the rows being decoded, nor waits for a batch to fill."""

    def __init__(self, prompts: Iterable[Prompt], ahead: int):
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self.done = False
        self.error: BaseException | None = None
        threading.Thread(target=self._read, args=(prompts,), daemon=True).start()

    def _read(self, prompts: Iterable[Prompt]) -> None:
        try:
            for prompt in prompts:
                self.queue.put(("prompt", prompt))
            self.queue.put(("end", None))
        except BaseException as e:  # raised again where the prompts are taken
            self.queue.put(("error", e))

    def take(self, n: int, wait: bool) -> list[Prompt]:
        """Up to ``n`` prompts that are ready; with ``wait``, wait for the first one."""
        out: list[Prompt] = []
        while len(out) < n and not self.done:
            try:
                kind, item = self.queue.get(block=wait and not out)
            except queue.Empty:
                break
            if kind == "end":
                self.done = True
            elif kind == "error":  # raised when the rows already running are written
                self.done = True
                self.error = item
            else:
                out.append(item)
        return out


def _cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # transformers before 4.56


def _pad_left(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    if width == 0:
        return x
    shape = list(x.shape)
    shape[dim] = width
    return torch.cat([x.new_zeros(shape), x], dim=dim)


class Generator:
    """Batched decoding with a shared system-prefix cache; see the module docstring."""

    def __init__(self, model, tokenizer: SpeechTokenizer, sampling: Sampling | None = None,
                 batch_size: int = 8, prefix_cache: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling or Sampling()
        self.sampling.check()
        self.batch_size = max(1, batch_size)
        self.device = next(model.parameters()).device
        self.eos_id = tokenizer.eos_id
        self.eosp_id = tokenizer.markers.get(EOSP)
        self.pad_id = tokenizer.hf.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_id if self.eos_id is not None else 0
        config = model.config
        self.max_length = getattr(config, "max_position_embeddings", None)
        self.prefix_ids = system_prefix_ids(tokenizer) if prefix_cache else []
        self._prefix_cache = None
        # tokens whose text can end "<eoa>": only after one of them is the tail decoded
        vocab = tokenizer.hf.convert_ids_to_tokens(list(range(len(tokenizer))))
        self._closing = torch.zeros(max(len(tokenizer), config.vocab_size), dtype=torch.bool)
        for i, piece in enumerate(vocab):
            if piece is not None and (">" in piece or piece == "<0x3E>"):
                self._closing[i] = True
        params = forward_keywords(model)
        self._cache_arg = cache_keyword(model)
        # logits of the last position only: a prefill need not project every position
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.stats = {"prompt_tokens": 0, "prefix_tokens_reused": 0, "new_tokens": 0,
                      "forward_passes": 0}

    # --- the model ---------------------------------------------------------------------

    def _forward(self, ids, mask, positions, cache):
        self.stats["forward_passes"] += 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         use_cache=True, **{self._cache_arg: cache}, **self._last_only)
        return out.logits[:, -1].float(), output_cache(out)

    def _new_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        from transformers import DynamicCache

        try:
            cache = DynamicCache(config=self.model.config)
        except TypeError:  # older transformers
            cache = DynamicCache()
        for i, (k, v) in enumerate(layers or ()):
            cache.update(k, v, i)
        return cache

    @torch.inference_mode()
    def prefix_cache(self):
        """The key/value cache of the system prefix (computed on first use)."""
        if self._prefix_cache is None and self.prefix_ids:
            ids = torch.tensor([self.prefix_ids], device=self.device)
            _, cache = self._forward(ids, torch.ones_like(ids),
                                     torch.arange(len(self.prefix_ids), device=self.device)[None],
                                     self._new_cache())
            self._prefix_cache = cache
        return self._prefix_cache

    def _uses_prefix(self, prompt: Prompt) -> bool:
        n = len(self.prefix_ids)
        return n > 0 and len(prompt.ids) > n and prompt.ids[:n] == self.prefix_ids

    # --- public ------------------------------------------------------------------------

    def generate(self, prompts: Iterable[Prompt]) -> Iterator[Result]:
        """Decode every prompt; yield each as soon as it is finished (not in input order).

        Up to ``batch_size`` prompts are decoded together. A row that finishes leaves the
        batch at once and a waiting prompt takes its place (its prompt is run through the
        model, then it joins the running rows, left-padded to their length), so the batch
        stays full however unequal the answers are. An exception raised while reading
        ``prompts`` is raised again once the rows already running are done.
        """
        feed = _Feed(prompts, 2 * self.batch_size)
        running: _Running | None = None
        while True:
            n = len(running.rows) if running is not None else 0
            if n < self.batch_size and not feed.done:
                new = feed.take(self.batch_size - n, wait=running is None)
                if new:
                    running = self._admit(running, new)
            if running is None:
                if feed.error is not None:
                    raise feed.error
                return
            running = yield from self._step(running)

    # --- decoding ----------------------------------------------------------------------

    @torch.inference_mode()
    def _admit(self, running: _Running | None, prompts: list[Prompt]) -> _Running:
        """Prefill ``prompts`` (with the prefix cache where they start with the prefix) and
        merge them into the running rows."""
        groups = [[p for p in prompts if self._uses_prefix(p)],
                  [p for p in prompts if not self._uses_prefix(p)]]
        for group in groups:
            if group:
                running = self._merge(running, self._prefill(group))
        return running

    def _prefill(self, prompts: list[Prompt]) -> _Running:
        s = self.sampling
        device = self.device
        uses_prefix = self._uses_prefix(prompts[0])
        start = len(self.prefix_ids) if uses_prefix else 0
        rows = []
        for p in prompts:
            budget = s.max_new_tokens
            if self.max_length is not None:
                budget = max(1, min(budget, self.max_length - len(p.ids)))
            g = None
            if not s.greedy:
                g = torch.Generator(device=device)
                g.manual_seed(row_seed(s.seed, p.id))
            rows.append(_Row(p, g, budget))
            self.stats["prompt_tokens"] += len(p.ids)
            self.stats["prefix_tokens_reused"] += start
        suffixes = [p.ids[start:] for p in prompts]
        width = max(len(x) for x in suffixes)
        b = len(prompts)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, start + width), dtype=torch.long)
        mask[:, :start] = 1
        for r, x in enumerate(suffixes):
            ids[r, width - len(x):] = torch.tensor(x)
            mask[r, start + width - len(x):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)[:, start:]
        if uses_prefix:
            cache = copy.deepcopy(self.prefix_cache())
            cache.batch_repeat_interleave(b)
        else:
            cache = self._new_cache()
        logits, cache = self._forward(ids, mask, positions, cache)
        return _Running(rows, cache, mask, positions[:, -1], logits)

    def _merge(self, a: _Running | None, b: _Running) -> _Running:
        """One batch of the rows of ``a`` and ``b``, the shorter left-padded (masked)."""
        if a is None:
            return b
        length = max(a.mask.shape[1], b.mask.shape[1])
        layers = []
        for (ka, va), (kb, vb) in zip(_cache_layers(a.cache), _cache_layers(b.cache)):
            pa, pb = length - ka.shape[-2], length - kb.shape[-2]
            layers.append((torch.cat([_pad_left(ka, pa, -2), _pad_left(kb, pb, -2)]),
                           torch.cat([_pad_left(va, pa, -2), _pad_left(vb, pb, -2)])))
        mask = torch.cat([_pad_left(a.mask, length - a.mask.shape[1], 1),
                          _pad_left(b.mask, length - b.mask.shape[1], 1)])
        return _Running(a.rows + b.rows, self._new_cache(layers), mask,
                        torch.cat([a.last_pos, b.last_pos]), torch.cat([a.logits, b.logits]))

    @torch.inference_mode()
    def _step(self, running: _Running):
        """Choose every row's next token; yield the rows that end; feed the others.

        Returns the running rows left (None when none is).
        """
        tokens = self._choose(running.logits, running.rows)
        keep: list[int] = []
        for r, row in enumerate(running.rows):
            stop = self._stop(row, int(tokens[r]))
            if stop is None:
                keep.append(r)
                continue
            self.stats["new_tokens"] += len(row.new_ids)
            yield Result(row.prompt, row.new_ids, stop)
        if not keep:
            return None
        cache, mask, last_pos = running.cache, running.mask, running.last_pos
        rows = running.rows
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=self.device)
            tokens, mask, last_pos = tokens[index], mask[index], last_pos[index]
            rows = [rows[r] for r in keep]
            lead = int(mask.any(0).int().argmax())  # columns no row attends to any more
            if lead > 0:
                mask = mask[:, lead:]
                cache = self._new_cache([(k[index, :, lead:], v[index, :, lead:])
                                         for k, v in _cache_layers(cache)])
            else:
                cache.batch_select_indices(index)
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        last_pos = last_pos + 1
        logits, cache = self._forward(tokens[:, None], mask, last_pos[:, None], cache)
        return _Running(rows, cache, mask, last_pos, logits)

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        s = self.sampling
        if logits.shape[-1] > len(self.tokenizer):  # rows a padded embedding adds: no tokens
            logits[:, len(self.tokenizer):] = float("-inf")
        if self.eos_id is not None and s.min_new_tokens > 0:
            early = torch.tensor([len(row.new_ids) < s.min_new_tokens for row in rows],
                                 device=logits.device)
            logits[early, self.eos_id] = float("-inf")
        if s.greedy:
            return logits.argmax(-1)
        logits = logits / s.temperature
        if 0 < s.top_k < logits.shape[-1]:
            kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if s.top_p < 1:
            ordered, order = torch.sort(logits, descending=True, dim=-1)
            probs = ordered.softmax(-1)
            # drop a token when the ones before it already hold top_p (keep at least one)
            drop = (probs.cumsum(-1) - probs) > s.top_p
            drop[:, 0] = False
            logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        probs = logits.softmax(-1)
        return torch.cat([torch.multinomial(probs[r], 1, generator=row.generator)
                          for r, row in enumerate(rows)])

    def _stop(self, row: _Row, token: int) -> str | None:
        """Append ``token`` to the row; why it stops now, or None to go on."""
        if token == self.eos_id:
            return "eos"
        row.new_ids.append(token)
        if row.prompt.task == "continue":
            if token == self.eosp_id:
                return "eosp"
        elif self._closing[token] and EOA in self.tokenizer.decode(row.new_ids[-8:]):
            return "eoa"
        if len(row.new_ids) >= row.budget:
            return "length" if row.budget == self.sampling.max_new_tokens else "context"
        return None


# --- answers ------------------------------------------------------------------------------

def answer_record(result: Result, tokenizer: SpeechTokenizer) -> tuple[dict, Answer]:
    """The output record of a finished prompt, and the parsed answer (for its notes)."""
    prompt = result.prompt
    record = prompt.record
    raw = tokenizer.decode(result.new_ids)
    answer = parse_answer(raw, prompt.task, tokenizer.k, prompt.spoken)
    if result.stop in ("length", "context"):
        limit = "token budget" if result.stop == "length" else "model's context"
        answer.notes.append(f"stopped at the {limit} ({len(result.new_ids)} new tokens) "
                            "before the end of the answer")
    out = {"id": record["id"]}
    out.update({k: v for k, v in record.items() if k not in QUESTION_KEYS and k != "id"})
    out["task"] = prompt.task
    out.update(answer.fields())
    if answer.units is not None:
        meta = record.get("units_meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta.update(k=tokenizer.k, dedup=True)
        out["units_meta"] = meta
    out["raw"] = raw
    out["prompt"] = {k: v for k, v in record.items() if k != "id"}
    answer.notes = prompt.notes + answer.notes
    return out, answer
