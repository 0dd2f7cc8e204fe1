"""Packing training data into pre-tokenized, memory-mappable shards.

Input: stage-1 lines or unit records (``<sosp>…<eosp>``), or SpeechInstruct JSONL
(``{"prefix", "plain_text"}``, the published files as they are).

* Stage 1, as the reference's ``ma_pretrain.py``: each utterance is tokenized with the
  tokenizer's special tokens (LLaMA: BOS, no EOS), the utterances are concatenated and cut
  into blocks of ``block_size`` tokens; the last, short block is dropped. Every token is
  trained.
* Stages 2 and 3, as ``cm_sft.py``/``com_sft.py``: ``prefix + plain_text`` is tokenized,
  truncated to ``max_length`` tokens, EOS is appended unless the sequence ends with it or
  was cut; the loss mask is 0 over ``len(tokenize(prefix))`` tokens (reference behaviour),
  or with ``train_on_inputs=False`` over the whole human turn, through the ``[SpeechGPT]``
  token.

Layout of an output directory (one "part" per shard of a multi-node job)::

    part-00000-of-00004.json          header: format and version (PACK_FORMAT), tokenizer,
                                      settings, counts
    part-00000-of-00004.tokens.bin    token ids, uint16 (vocab <= 65536) or uint32
    part-00000-of-00004.mask.bin      uint8, 1 where the token is trained
    part-00000-of-00004.offsets.bin   int64, sequence i is tokens[offsets[i]:offsets[i+1]]
    part-00000-of-00004.names.jsonl   stages 2-3: the record id of each sequence

The ``.bin`` files are raw little-endian arrays (``numpy.memmap`` reads them; the header
gives dtype and length). A part's header is written last, atomically: a part without one is
unfinished. An unfinished part (``*.partial`` files and ``*.progress.json``) resumes where its
last commit left it. Output depends only on the inputs, the tokenizer and the settings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sgpt.core.errors import RecordError, SgptError
from sgpt.core.files import write_json
from sgpt.core.formats import FileFormat
from sgpt.core.records import parse_line, source_stem
from sgpt.lm.prompts import SPEECHGPT
from sgpt.lm.tokenizer import SpeechTokenizer

STAGES = ("auto", "1", "2", "3")
OVERLONG = ("truncate", "drop")
BATCH = 256            # records tokenized together
COMMIT_EVERY = 4096    # records between two commits of an unfinished part
_UNIT = re.compile(r"<(\d+)>")
_EMPTY_SPEECH = re.compile(r"<sosp>\s*<eosp>")


class PackError(SgptError):
    """A pack that cannot be made or read as asked."""


PACK_FORMAT = FileFormat("sgpt-pack", "a packed part header",
                         "remove the directory's part-* files and pack again (sgpt-tokenize pack)",
                         error=PackError)


@dataclass
class PackConfig:
    stage: str = "auto"           # 1, 2, 3 or auto (from the first good record)
    block_size: int = 1024        # stage 1: tokens per block
    max_length: int = 512         # stages 2-3: longest sequence (the reference's 512)
    train_on_inputs: bool = True  # stages 2-3: True masks the prefix only (reference)
    overlong: str = "truncate"    # stages 2-3: truncate (reference) or drop longer ones

    def check(self) -> None:
        if self.stage not in STAGES:
            raise PackError(f"unknown stage {self.stage!r} (use {', '.join(STAGES)})")
        if self.block_size < 2 or self.max_length < 2:
            raise PackError("--block-size and --max-length must be at least 2")
        if self.overlong not in OVERLONG:
            raise PackError(f"unknown --overlong {self.overlong!r} (use truncate or drop)")


def part_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}"


# --- input ---------------------------------------------------------------------------------

class Inputs:
    """Non-blank input lines of files (stdin is spooled to a temporary file), countable and
    re-readable, so that a shard can take its contiguous slice and a resumed run can skip."""

    def __init__(self, sources: Sequence[str]):
        self.sources = list(sources) or ["-"]
        self._spool: str | None = None
        self.paths: list[tuple[str, str]] = []  # (path to read, name in messages)
        for source in self.sources:
            if source == "-":
                if self._spool is None:
                    fd, self._spool = tempfile.mkstemp(prefix="sgpt-pack-stdin-")
                    with os.fdopen(fd, "wb") as f:
                        shutil.copyfileobj(sys.stdin.buffer, f)
                self.paths.append((self._spool, "stdin"))
            else:
                if os.path.isdir(source):
                    raise PackError(f"{source}: is a directory, not a data file")
                if not os.path.isfile(source):
                    raise PackError(f"{source}: no such file")
                self.paths.append((source, source))

    def close(self) -> None:
        if self._spool is not None:
            os.unlink(self._spool)
            self._spool = None

    def signature(self) -> list:
        """What the inputs were (names and sizes): a resumed run must see the same."""
        return [[name, os.path.getsize(path)] for path, name in self.paths]

    def count(self) -> int:
        n = 0
        for path, _ in self.paths:
            with open(path, "rb") as f:
                n += sum(1 for line in f if line.strip())
        return n

    def lines(self, select: range) -> Iterator[tuple[str, str, str]]:
        """(where, default id, text) of the non-blank lines whose index is in ``select``."""
        index = 0
        for path, name in self.paths:
            stem = source_stem("-" if name == "stdin" else name)
            with open(path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    if not raw.strip():
                        continue
                    if index >= select.stop:
                        return
                    if index >= select.start:
                        where = f"{name}:{lineno}"
                        try:
                            text = raw.decode("utf-8")
                        except UnicodeDecodeError:
                            text = None
                        yield where, f"{stem}_{lineno}", text
                    index += 1


# --- one record -> token ids ---------------------------------------------------------------

def _check_units_in_text(text: str, k: int, where: str) -> None:
    for m in _UNIT.finditer(text):
        if int(m.group(1)) >= k:
            raise RecordError(where, f"unit {m.group(1)} is outside 0..{k - 1} (k={k})")
    if _EMPTY_SPEECH.search(text):
        raise RecordError(where, "empty units (<sosp> right before <eosp>)")


def record_kind(record: dict) -> str:
    """``instruct`` (prefix + plain_text), ``pretrain`` (units or a text line)."""
    if "prefix" in record or "plain_text" in record:
        return "instruct"
    if "units" in record or "text" in record:
        return "pretrain"
    raise RecordError(record["id"], "no 'units', 'text' or 'prefix'/'plain_text' keys")


def pretrain_ids(tok: SpeechTokenizer, record: dict, separator: list[int]) -> np.ndarray | str:
    """Token ids of a unit record (by arithmetic), or the text to encode of a text record."""
    where = record["id"]
    if "units" in record:
        units = record["units"]
        if not units:
            raise RecordError(where, "'units' is empty")
        try:
            body = tok.units_to_ids(units)
        except ValueError as e:
            raise RecordError(where, f"{e} (k={tok.k})") from None
        sosp, eosp = tok.markers["<sosp>"], tok.markers["<eosp>"]
        return np.concatenate([np.array(separator + [sosp], dtype=np.int64), body,
                               np.array([eosp] + tok.special_suffix, dtype=np.int64)])
    text = record["text"]
    if not isinstance(text, str) or not text.strip():
        raise RecordError(where, "'text' must be a non-empty string")
    _check_units_in_text(text, tok.k, where)
    return text


def instruct_texts(record: dict, k: int) -> tuple[str, str]:
    where = record["id"]
    for key in ("prefix", "plain_text"):
        if key not in record:
            raise RecordError(where, f"no '{key}' key (SpeechInstruct records have 'prefix' "
                                     "and 'plain_text')")
        if not isinstance(record[key], str):
            raise RecordError(where, f"'{key}' must be a string")
    if not record["plain_text"].strip():
        raise RecordError(where, "'plain_text' is empty")
    _check_units_in_text(record["prefix"] + record["plain_text"], k, where)
    return record["prefix"], record["plain_text"]


# --- the writer of one part ----------------------------------------------------------------

class _Part:
    """The files of one part, appended to, committed now and then, renamed when done."""

    FILES = ("tokens", "mask", "offsets", "names")

    def __init__(self, out: Path, name: str, dtype: np.dtype):
        self.out = out
        self.name = name
        self.dtype = dtype
        self.progress_path = out / f"{name}.progress.json"

    def path(self, what: str, partial: bool = True) -> Path:
        suffix = "jsonl" if what == "names" else "bin"
        return self.out / (f"{self.name}.{what}.{suffix}" + (".partial" if partial else ""))

    def start(self, state: dict | None) -> None:
        """Open the partial files: fresh, or cut back to the committed ``state``."""
        if state is None:
            for what in self.FILES:
                self.path(what).write_bytes(b"")
            self.path("offsets").write_bytes(np.zeros(1, np.int64).tobytes())
        else:
            for what in self.FILES:
                size = state["bytes"][what]
                path = self.path(what)
                if not path.exists() or path.stat().st_size < size:
                    raise PackError(f"{path}: shorter than its last commit; remove "
                                    f"{self.name}.* and pack again")
                with open(path, "r+b") as f:
                    f.truncate(size)
        self.files = {what: open(self.path(what), "ab") for what in self.FILES}

    def append(self, ids: np.ndarray, mask: np.ndarray, total_tokens: int,
               name: str | None) -> None:
        self.files["tokens"].write(ids.astype(self.dtype).tobytes())
        self.files["mask"].write(mask.astype(np.uint8).tobytes())
        self.files["offsets"].write(np.array([total_tokens], np.int64).tobytes())
        if name is not None:
            self.files["names"].write((json.dumps(name, ensure_ascii=False) + "\n").encode())

    def commit(self, state: dict) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
        state["bytes"] = {what: self.files[what].tell() for what in self.FILES}
        write_json(self.progress_path, state)

    def finish(self, header: dict, keep_names: bool) -> None:
        for f in self.files.values():
            f.close()
        for what in self.FILES:
            if what == "names" and not keep_names:
                self.path(what).unlink()
                continue
            os.replace(self.path(what), self.path(what, partial=False))
        write_json(self.out / f"{self.name}.json", header)
        self.progress_path.unlink(missing_ok=True)


# --- packing -------------------------------------------------------------------------------

class Packer:
    """Packs records into one part of ``out``: ``Packer(tok, out, config, shard).run(inputs)``.

    ``on_error(where, reason)`` is called for each bad record (which is left out).
    """

    def __init__(self, tok: SpeechTokenizer, out: str, config: PackConfig,
                 shard: tuple[int, int] = (0, 1),
                 on_error: Callable[[str, str], None] | None = None,
                 on_info: Callable[[str], None] | None = None,
                 advance: Callable[[int], None] | None = None):
        config.check()
        if not config.train_on_inputs and SPEECHGPT not in tok.markers:
            raise PackError("--train-on-inputs false needs a tokenizer with the [SpeechGPT] "
                            "marker (extend it without --units-only)")
        self.tok = tok
        self.out = Path(out)
        self.config = config
        self.shard = shard
        self.on_error = on_error or (lambda where, reason: None)
        self.on_info = on_info or (lambda message: None)
        self.advance = advance or (lambda n=1: None)
        self.name = part_name(*shard)
        self.dtype = np.dtype(np.uint16 if len(tok) <= 65536 else np.uint32)
        self.separator = tok.special_prefix or (
            [tok.bos_id] if tok.bos_id is not None else [])

    # -- settings that a resumed run must share
    def _identity(self, inputs: Inputs) -> dict:
        return {"config": asdict(self.config), "shard": list(self.shard),
                "inputs": inputs.signature(), "tokenizer": self.tok.describe()["fingerprint"],
                "tokenizer_size": len(self.tok)}

    def _check_done(self, header: dict, identity: dict) -> None:
        """A finished part stands for this run only when it was made from the same inputs
        (names and sizes; headers before ``input_bytes`` give names only), settings, shard
        and tokenizer: else a re-run after the data changed would keep the old shards."""
        sizes = [size for _, size in identity["inputs"]]
        made = {"config": header.get("settings"), "shard": header.get("part"),
                "tokenizer": header.get("tokenizer", {}).get("fingerprint"),
                "inputs": header.get("inputs"), "input_bytes": header.get("input_bytes", sizes)}
        now = {"config": json.loads(json.dumps(identity["config"])),
               "shard": identity["shard"], "tokenizer": identity["tokenizer"],
               "inputs": [name for name, _ in identity["inputs"]], "input_bytes": sizes}
        other = [key for key in now if made[key] != now[key]]
        if other:
            raise PackError(f"{self.header_path()}: a part made from other inputs or settings "
                            f"({', '.join(other)}): remove {self.name}.* to pack again, or "
                            "give another -o")

    def header_path(self) -> Path:
        return self.out / f"{self.name}.json"

    def run(self, inputs: Inputs, select: range) -> dict:
        """Pack the input lines in ``select``; return the part's header."""
        self.out.mkdir(parents=True, exist_ok=True)
        identity = self._identity(inputs)
        if self.header_path().exists():
            header = json.loads(self.header_path().read_text())
            PACK_FORMAT.check(self.header_path(), header)
            self._check_done(header, identity)
            self.on_info(f"{self.header_path()} exists: this part is done (remove it to "
                         "pack again)")
            return header
        part = _Part(self.out, self.name, self.dtype)
        state = None
        if part.progress_path.exists():
            state = json.loads(part.progress_path.read_text())
            if state.get("identity") != identity:
                raise PackError(f"{self.out} holds an unfinished {self.name} made from other "
                                f"inputs or settings: remove {self.name}.* or pack as before")
            for where, reason in state["failed"]:
                self.on_error(where, reason)
            self.on_info(f"resuming {self.name} after {state['consumed']} records")
        else:
            state = {"identity": identity, "consumed": 0, "sequences": 0, "tokens": 0,
                     "trained": 0, "carry": [], "stage": self.config.stage, "failed": [],
                     "truncated": 0, "dropped": 0, "dropped_tokens": 0}
            state["stage"] = None if self.config.stage == "auto" else self.config.stage
        part.start(state if state["consumed"] else None)
        if not state["consumed"]:
            part.commit(state)
        self.advance(state["consumed"])
        todo = range(select.start + state["consumed"], select.stop)
        batch: list[tuple[str, str, str | None]] = []
        since_commit = 0
        # An exception (--strict, ^C) leaves the part at its last commit, whence a re-run
        # resumes; what was appended after it is cut off then.
        for line in inputs.lines(todo):
            batch.append(line)
            if len(batch) == BATCH:
                self._batch(batch, part, state)
                since_commit += len(batch)
                batch = []
                if since_commit >= COMMIT_EVERY:
                    part.commit(state)
                    since_commit = 0
        if batch:
            self._batch(batch, part, state)
        return self._finish(part, state)

    def _fail(self, state: dict, where: str, reason: str) -> None:
        state["failed"].append([where, reason])
        self.on_error(where, reason)

    def _batch(self, lines: list, part: _Part, state: dict) -> None:
        """Tokenize and append a batch of lines; ``consumed`` moves past them."""
        records = []
        for where, default_id, text in lines:
            try:
                if text is None:
                    raise RecordError(where, "not UTF-8 text")
                record = parse_line(text, default_id, where)
                kind = record_kind(record)
                stage = state["stage"] or ("1" if kind == "pretrain" else "2")
                if (stage == "1") != (kind == "pretrain"):
                    raise RecordError(record["id"], (
                        "a SpeechInstruct record in a stage-1 pack" if stage == "1" else
                        "a stage-1 (units/text) record in a stage-2/3 pack"))
                state["stage"] = stage
                if kind == "pretrain":
                    records.append((record["id"], pretrain_ids(self.tok, record,
                                                                 self.separator)))
                else:
                    records.append((record["id"], instruct_texts(record, self.tok.k)))
            except RecordError as e:
                self._fail(state, e.where, e.reason)
        consumed = len(lines)
        if state["stage"] == "1":
            self._pretrain(records, part, state)
        elif records:
            self._instruct(records, part, state)
        state["consumed"] += consumed
        self.advance(consumed)

    def _pretrain(self, records: list, part: _Part, state: dict) -> None:
        texts = [x for _, x in records if isinstance(x, str)]
        encoded = iter(self.tok.encode_arrays(texts)) if texts else iter(())
        pieces = [np.asarray(state["carry"], dtype=np.int64)]
        for _, x in records:
            if isinstance(x, str):
                ids = next(encoded)
                if not self.tok.special_prefix and self.separator:
                    ids = np.concatenate([np.array(self.separator, np.int64), ids])
                pieces.append(ids)
            else:
                pieces.append(x)
        stream = np.concatenate(pieces)
        size = self.config.block_size
        n = len(stream) // size
        ones = np.ones(size, np.uint8)
        for b in range(n):
            state["tokens"] += size
            state["trained"] += size
            state["sequences"] += 1
            part.append(stream[b * size:(b + 1) * size], ones, state["tokens"], None)
        state["carry"] = stream[n * size:].tolist()

    def _instruct(self, records: list, part: _Part, state: dict) -> None:
        cfg, tok = self.config, self.tok
        prefixes = [p for _, (p, _) in records]
        fulls = [p + t for _, (p, t) in records]
        bodies = tok.encode_arrays(fulls, add_special_tokens=False)
        user = tok.encode_arrays(list(dict.fromkeys(prefixes)), add_special_tokens=True)
        user_len = dict(zip(dict.fromkeys(prefixes), (len(u) for u in user)))
        head = np.array(tok.special_prefix, np.int64)
        tail = np.array(tok.special_suffix, np.int64)
        room = cfg.max_length - len(head) - len(tail)
        for (rid, (prefix, _)), body in zip(records, bodies):
            cut = len(body) > room
            if cut and cfg.overlong == "drop":
                state["dropped"] += 1
                state["dropped_tokens"] += int(len(body) + len(head) + len(tail))
                continue
            state["truncated"] += int(cut)
            ids = np.concatenate([head, body[:room], tail])
            if tok.eos_id is not None and ids[-1] != tok.eos_id and len(ids) < cfg.max_length:
                ids = np.concatenate([ids, np.array([tok.eos_id], np.int64)])
            mask = np.ones(len(ids), np.uint8)
            if cfg.train_on_inputs:
                mask[:min(user_len[prefix], cfg.max_length)] = 0
            else:
                hits = np.flatnonzero(ids == tok.markers[SPEECHGPT])
                if not len(hits):
                    self._fail(state, rid, "no [SpeechGPT] turn"
                               + (" within --max-length" if cut else ""))
                    continue
                mask[:hits[0] + 1] = 0
            state["tokens"] += len(ids)
            state["trained"] += int(mask.sum())
            state["sequences"] += 1
            part.append(ids, mask, state["tokens"], rid)

    def _finish(self, part: _Part, state: dict) -> dict:
        stage = state["stage"] or (self.config.stage if self.config.stage != "auto" else "1")
        header = {
            **PACK_FORMAT.stamp(),
            "part": list(self.shard),
            "stage": stage,
            "tokenizer": self.tok.describe(),
            "settings": asdict(self.config),
            "inputs": [name for name, _ in state["identity"]["inputs"]],
            "input_bytes": [size for _, size in state["identity"]["inputs"]],
            "dtype": self.dtype.name,
            "files": {what: part.path(what, partial=False).name for what in _Part.FILES
                      if what != "names" or stage != "1"},
            "records": state["consumed"],
            "failed": len(state["failed"]),
            "sequences": state["sequences"],
            "tokens": state["tokens"],
            "trained_tokens": state["trained"],
        }
        if stage == "1":
            header["dropped_tail_tokens"] = len(state["carry"])
            if state["carry"]:
                self.on_info(f"{self.name}: the last {len(state['carry'])} tokens do not fill "
                             f"a block of {self.config.block_size} and are left out")
        else:
            header["truncated"] = state["truncated"]
            header["dropped"] = state["dropped"]
            if state["truncated"]:
                self.on_info(f"{self.name}: {state['truncated']} sequences longer than "
                             f"{self.config.max_length} tokens were truncated (--max-length)")
            if state["dropped"]:
                self.on_info(f"{self.name}: {state['dropped']} sequences longer than "
                             f"{self.config.max_length} tokens were left out (--overlong drop)")
        part.commit(state)
        part.finish(header, keep_names=stage != "1")
        return header


# --- reading -------------------------------------------------------------------------------

class PackedDataset:
    """The sequences of a packed directory, memory-mapped: ``ds[i] -> (ids, mask)``.

    All parts must be finished and built with the same tokenizer and settings.
    """

    def __init__(self, path: str):
        self.path = Path(path)
        headers = sorted(self.path.glob("part-*-of-*.json"))
        headers = [h for h in headers if re.fullmatch(r"part-\d+-of-\d+\.json", h.name)]
        if not headers:
            raise PackError(f"{path}: no finished part (part-*-of-*.json)")
        self.headers = [json.loads(h.read_text()) for h in headers]
        for h, header in zip(headers, self.headers):
            PACK_FORMAT.check(h, header)
        count = self.headers[0]["part"][1]
        have = sorted(h["part"][0] for h in self.headers)
        if have != list(range(count)) or any(h["part"][1] != count for h in self.headers):
            missing = sorted(set(range(count)) - set(have))
            raise PackError(f"{path}: parts {missing} of {count} are not finished")
        first = self.headers[0]
        for h in self.headers[1:]:
            if (h["tokenizer"]["fingerprint"] != first["tokenizer"]["fingerprint"]
                    or h["settings"] != first["settings"] or h["stage"] != first["stage"]):
                raise PackError(f"{path}: parts differ in tokenizer or settings")
        self.header = first
        self.stage = first["stage"]
        self.tokenizer = first["tokenizer"]
        self._parts = []
        for h in self.headers:
            files = h["files"]
            tokens = _memmap(self.path / files["tokens"], h["dtype"], h["tokens"])
            mask = _memmap(self.path / files["mask"], "uint8", h["tokens"])
            offsets = _memmap(self.path / files["offsets"], "int64", h["sequences"] + 1)
            self._parts.append((tokens, mask, offsets, files.get("names")))
        sizes = [h["sequences"] for h in self.headers]
        self._starts = np.cumsum([0, *sizes])
        self._names: list[list[str]] | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def tokens(self) -> int:
        return sum(h["tokens"] for h in self.headers)

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        p = int(np.searchsorted(self._starts, i, side="right") - 1)
        return p, i - int(self._starts[p])

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        p, j = self._locate(i)
        tokens, mask, offsets, _ = self._parts[p]
        a, b = int(offsets[j]), int(offsets[j + 1])
        return tokens[a:b], mask[a:b]

    def name(self, i: int) -> str | None:
        """The record id of sequence ``i`` (stages 2-3), or None (stage-1 blocks)."""
        if self._names is None:
            self._names = []
            for *_, names in self._parts:
                if names is None:
                    self._names.append([])
                    continue
                with open(self.path / names, encoding="utf-8") as f:
                    self._names.append([json.loads(line) for line in f])
        p, j = self._locate(i)
        return self._names[p][j] if self._names[p] else None


def _memmap(path: Path, dtype: str, length: int) -> np.ndarray:
    expected = length * np.dtype(dtype).itemsize
    if not path.is_file() or path.stat().st_size != expected:
        raise PackError(f"{path}: missing or not {expected} bytes long")
    if length == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))
