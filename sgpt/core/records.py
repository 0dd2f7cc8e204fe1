"""Records: JSON Lines and the two unit line formats, auto-detected per line.

A record is a plain ``dict`` (man sgpt.7 lists its keys). Three line formats are read
everywhere records are read, told apart by their first character:

* ``{...}``             a JSON object (keys the reader does not know pass through);
* ``<sosp><12><7><eosp>`` SpeechGPT unit lines (spaces between tokens are tolerated);
* ``12 7 ...``           fairseq ``.km`` label lines (not deduplicated).

Lines of the two unit formats carry no id: they get ``{file stem}_{line number}``.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from sgpt.core.errors import RecordError, SgptError, first_line

FORMATS = ("jsonl", "speechgpt", "fairseq")

_SPEECHGPT_TOKEN = re.compile(r"\s*(<sosp>|<eosp>|<(\d+)>)\s*")
_KM_LINE = re.compile(r"^\d+(?:\s+\d+)*$")


def source_stem(source: str) -> str:
    """The stem that names records of a source: ``a/b.km`` -> ``b``, ``-`` -> ``stdin``."""
    return "stdin" if source == "-" else Path(source).stem


def parse_speechgpt_units(text: str) -> list[int] | None:
    """Units of a ``<sosp><1><2><eosp>`` string; None if it holds anything else."""
    units: list[int] = []
    pos = 0
    while pos < len(text):
        m = _SPEECHGPT_TOKEN.match(text, pos)
        if m is None:
            return None
        if m.group(2) is not None:
            units.append(int(m.group(2)))
        pos = m.end()
    return units


def format_units(units: Iterable[int], fmt: str) -> str:
    """Units as one line of ``fmt``: ``speechgpt`` or ``fairseq``."""
    if fmt == "speechgpt":
        return "<sosp>" + "".join(f"<{u}>" for u in units) + "<eosp>"
    if fmt == "fairseq":
        return " ".join(str(u) for u in units)
    raise ValueError(f"unknown unit format {fmt!r}")


def _int_list(record: dict, key: str, where: str, minimum: int) -> None:
    values = record[key]
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values
    ):
        raise RecordError(where, f"'{key}' must be a list of integers >= {minimum}")


def validate(record: dict, where: str) -> dict:
    """Check the keys every tool relies on; return the record."""
    if not isinstance(record.get("id"), str) or not record["id"]:
        raise RecordError(where, "'id' must be a non-empty string")
    if "units" in record:
        _int_list(record, "units", record["id"], 0)
    if "durations" in record:
        _int_list(record, "durations", record["id"], 1)
        if len(record["durations"]) != len(record.get("units", ())):
            raise RecordError(record["id"], "'durations' and 'units' differ in length")
    for key in ("text", "audio", "task"):
        if key in record and not isinstance(record[key], str):
            raise RecordError(record["id"], f"'{key}' must be a string")
    return record


def parse_line(line: str, default_id: str, where: str | None = None) -> dict:
    """One input line as a record; raises RecordError naming ``where`` (or the id)."""
    where = where or default_id
    text = line.strip()
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(where, f"malformed JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise RecordError(where, "malformed JSON (nested too deep)") from None
        except ValueError as e:  # an integer of more digits than Python converts
            raise RecordError(where, f"malformed JSON ({first_line(e)})") from None
        if not isinstance(record, dict):
            raise RecordError(where, "a JSON line must be an object")
        if "id" not in record:
            audio = record.get("audio")
            record["id"] = Path(audio).stem if isinstance(audio, str) and audio else default_id
        if not isinstance(record["id"], str):
            raise RecordError(where, "'id' must be a string")
        return validate(record, where if not record["id"] else record["id"])
    if text.startswith("<"):
        units = parse_speechgpt_units(text)
        if units is None:
            raise RecordError(where, "not a <sosp><unit>...<eosp> line")
        return {"id": default_id, "units": units, "units_meta": {"dedup": True}}
    if _KM_LINE.match(text):
        return {"id": default_id, "units": [int(u) for u in text.split()],
                "units_meta": {"dedup": False}}
    raise RecordError(where, "not a JSON record, a <sosp> unit line or a fairseq unit line")


def read_records(sources: Iterable[str]) -> Iterator[dict | RecordError]:
    """Records of every line of every source, in order; bad lines come as RecordError.

    Each line is decoded and parsed on its own: a line that is not UTF-8, not JSON, nested
    too deep or not a record is one RecordError naming ``file:line``, and the lines around
    it are still read. A UTF-8 byte-order mark is skipped. A source that cannot be opened
    yields one RecordError naming it.
    """
    for source in sources:
        stem = source_stem(source)
        name = "stdin" if source == "-" else source
        try:
            stream = sys.stdin.buffer if source == "-" else open(source, "rb")
        except FileNotFoundError:
            yield RecordError(source, "no such file")
            continue
        except IsADirectoryError:
            yield RecordError(source, "is a directory, not a file of records")
            continue
        except OSError as e:
            yield RecordError(source, e.strerror or str(e))
            continue
        try:
            for lineno, raw in enumerate(stream, 1):
                where = f"{name}:{lineno}"
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield RecordError(where, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at "
                                             f"column {e.start + 1})")
                    continue
                if not line.strip():
                    continue
                try:
                    yield parse_line(line, f"{stem}_{lineno}", where)
                except RecordError as e:
                    yield e
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()


def format_record(record: dict, fmt: str = "jsonl") -> str:
    """One output line (without newline) for a record."""
    if fmt == "jsonl":
        return json.dumps(record, ensure_ascii=False)
    return format_units(record["units"], fmt)


class RecordWriter:
    """Writes records one line each, flushed per record so that pipes stream.

    To stdout for ``-``. To a file, atomically and resumably: lines go to ``PATH.partial``
    and the ids written so far to ``PATH.partial.ids``; ``close()`` renames the partial file
    to PATH. A new writer over the same PATH (a re-run after a killed job) keeps what the
    partial file holds and reports those ids in ``done``, as it does for the ids of a
    finished JSONL output, so the caller skips them. ``done`` holds only what an earlier run
    wrote: a record this writer writes does not join it (a later record with the same id is
    the caller's to refuse, not to skip as resumed).
    """

    def __init__(self, path: str = "-", fmt: str = "jsonl"):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.path = path
        self.fmt = fmt
        self.done: set[str] = set()
        if path == "-":
            self._out, self._ids = sys.stdout, None
            return
        partial, journal = path + ".partial", path + ".partial.ids"
        try:  # a place that cannot be written (read-only, /proc...): one line naming it
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            if os.path.exists(partial) and os.path.exists(journal):
                self.done = set(_resume(partial, journal))
            else:
                self._start_from_finished(path, partial, journal)
            self._out = open(partial, "a", encoding="utf-8")
            self._ids = open(journal, "a", encoding="utf-8")
        except OSError as e:
            raise SgptError(f"{path}: cannot write there ({e.strerror or e})") from None

    def _start_from_finished(self, path: str, partial: str, journal: str) -> None:
        ids: list[str] = []
        lines: list[str] = []
        if self.fmt == "jsonl" and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.endswith("\n") and line.strip():
                        try:
                            ids.append(json.loads(line)["id"])
                        except (json.JSONDecodeError, KeyError, TypeError):
                            continue
                        lines.append(line)
        with open(partial, "w", encoding="utf-8") as f:
            f.writelines(lines)
        with open(journal, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(i) + "\n" for i in ids)
        self.done = set(ids)

    def write(self, record: dict) -> None:
        self._out.write(format_record(record, self.fmt) + "\n")
        self._out.flush()
        if self._ids is not None:
            self._ids.write(json.dumps(record["id"]) + "\n")
            self._ids.flush()

    def close(self) -> None:
        """Finish: for a file, rename the partial output into place."""
        if self._ids is None:
            return
        self._out.close()
        self._ids.close()
        os.replace(self.path + ".partial", self.path)
        os.remove(self.path + ".partial.ids")
        self._ids = None


def _resume(partial: str, journal: str) -> list[str]:
    """Ids in both the partial output and its journal; both are cut back to them."""
    with open(partial, "rb") as f:
        out_lines = f.read().split(b"\n")[:-1]  # a last line without newline is cut off
    with open(journal, "rb") as f:
        id_lines = f.read().split(b"\n")[:-1]
    n = min(len(out_lines), len(id_lines))
    with open(partial, "wb") as f:
        f.write(b"".join(line + b"\n" for line in out_lines[:n]))
    with open(journal, "wb") as f:
        f.write(b"".join(line + b"\n" for line in id_lines[:n]))
    return [json.loads(line) for line in id_lines[:n]]
