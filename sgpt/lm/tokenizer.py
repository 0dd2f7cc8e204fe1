"""The SpeechGPT vocabulary: extending a transformers tokenizer, and a fast encoder for it.

``extend_tokenizer`` appends, as ordinary (not special) added tokens and in the reference's
order, the unit tokens ``<0>``…``<k-1>``, then ``<sosp>``, ``<eosp>`` (the stage-1
vocabulary: LLaMA's 32,000 + 1,002 = 33,002), then ``[Human]``, ``[SpeechGPT]``, ``<eoh>``,
``<eos>`` (33,006). ``<eoa>`` stays plain text, as in the reference. A saved directory carries
``sgpt_tokenizer.json`` (k, the markers and their ids) so later tools need no flags.

Spacing. The published SpeechGPT models were trained with transformers 4.33, whose
tokenizers let an added token eat the whitespace on both of its sides, and whose (legacy)
LLaMA tokenizer starts every piece of text between added tokens as a new word (``▁:``
after ``[SpeechGPT]``). ``spacing="reference"`` (the default) reproduces that with today's
transformers: added tokens with ``lstrip``/``rstrip`` and a LLaMA tokenizer with
``legacy=True`` (tested against transformers 4.33 ids). ``spacing="plain"`` adds the tokens
as ``add_tokens`` does today and keeps the base tokenizer's own behaviour.

``SpeechTokenizer`` encodes SpeechInstruct strings fast and gives exactly the ids the
transformers tokenizer gives for the whole string: runs of unit tokens map to ids through a
table (arithmetic), markers through a dict, and each piece of text between them goes through
the transformers tokenizer in the context it has in the string (after an added token or at
the start, before one or at the end), so whitespace handling around added tokens and
sentencepiece's word-start marker come out as they do for the whole string. Text pieces
repeat (the system prefix, templates, instructions) and are cached.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from sgpt.core.errors import SgptError
from sgpt.core.formats import FileFormat
from sgpt.lm.prompts import DIALOG_MARKERS, MARKERS, SOSP, UNIT_MARKERS, added_tokens, unit_token

META_FILE = "sgpt_tokenizer.json"
# Files that define a tokenizer (hashed into its fingerprint); model weights are not.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                   META_FILE)
CACHE_LIMIT = 200_000  # text pieces kept encoded

_DIGITS = str.maketrans("<>", "  ")
_LEADING_ZERO = re.compile(r"<0[0-9]")


class TokenizerError(SgptError):
    """A tokenizer that cannot be loaded, or that cannot carry SpeechGPT's vocabulary."""


META_FORMAT = FileFormat("sgpt-tokenizer", "an sgpt tokenizer description",
                         "make it again with sgpt-tokenize extend", error=TokenizerError)


SPACINGS = ("reference", "plain")


def _tokenizer_class(directory: str):
    """The transformers class a local tokenizer directory names, if transformers has it.

    Loading through it is what AutoTokenizer does, without AutoTokenizer's import of torch
    (seconds, for every command that only tokenizes).
    """
    config = Path(directory) / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        name = json.loads(config.read_text()).get("tokenizer_class")
    except (ValueError, AttributeError):
        return None
    if not isinstance(name, str) or not name.isidentifier():
        return None
    import transformers

    try:
        return getattr(transformers, name, None)
    except Exception:  # a lazy import that fails: let AutoTokenizer try
        return None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def load_hf_tokenizer(source: str, legacy: bool | None = None):
    """A transformers tokenizer from a directory, a hub name, or a ``.gguf`` file.

    ``legacy`` (for tokenizers that have the setting, LLaMA's): force it on or off.
    """
    try:
        kwargs: dict = {}
        cls = None
        if source.endswith(".gguf"):
            path = Path(source)
            if not path.is_file():
                raise TokenizerError(f"{source}: no such GGUF file")
            source, kwargs["gguf_file"] = str(path.parent), path.name
        elif os.path.isfile(source):
            raise TokenizerError(f"{source}: give the tokenizer's directory (or a .gguf file)")
        elif os.path.isdir(source):
            cls = _tokenizer_class(source)
        if cls is None:
            from transformers import AutoTokenizer

            cls = AutoTokenizer
        elif legacy is not None and "legacy" in inspect.signature(cls.__init__).parameters:
            kwargs["legacy"] = legacy
        tokenizer = cls.from_pretrained(source, **kwargs)
        if legacy is not None and getattr(tokenizer, "legacy", legacy) != legacy:
            tokenizer = cls.from_pretrained(source, legacy=legacy, **kwargs)
        return tokenizer
    except TokenizerError:
        raise
    except Exception as e:  # transformers raises many kinds; one line is what the user needs
        if not os.path.exists(source):
            raise TokenizerError(f"{source}: no such directory, nor a tokenizer the hub (or "
                                 "its local cache) has under that name") from None
        if os.path.isdir(source) and not any(
                os.path.exists(os.path.join(source, name)) for name in _TOKENIZER_FILES):
            raise TokenizerError(f"{source}: no tokenizer here (none of "
                                 f"{', '.join(_TOKENIZER_FILES)})") from None
        first = str(e).strip().splitlines()[0].rstrip(": ") if str(e).strip() else ""
        raise TokenizerError(f"cannot load a tokenizer from {source}: "
                             f"{first or type(e).__name__}") from None


def extend_tokenizer(tokenizer, k: int = 1000, dialog: bool = True,
                     spacing: str = "reference") -> list[str]:
    """Add SpeechGPT's tokens that ``tokenizer`` lacks, in the reference's order.

    Returns the tokens added (none on an already extended tokenizer). Tokens already in
    the vocabulary keep their ids (the unit table then is not contiguous, and still exact);
    with ``spacing="reference"`` they are given its whitespace handling.
    """
    from transformers import AddedToken

    if k < 1:
        raise TokenizerError(f"k must be at least 1 (got {k})")
    if spacing not in SPACINGS:
        raise TokenizerError(f"unknown spacing {spacing!r} (use reference or plain)")
    strip = spacing == "reference"

    def token(text: str) -> AddedToken:
        return AddedToken(text, lstrip=strip, rstrip=strip, normalized=False, special=False)

    vocab = tokenizer.get_vocab()
    groups = [[unit_token(u) for u in range(k)] + list(UNIT_MARKERS)]
    if dialog:
        groups.append(list(DIALOG_MARKERS))
    added: list[str] = []
    for group in groups:  # the reference adds the stage-1 tokens, then the dialog markers
        missing = [t for t in group if t not in vocab]
        if missing:
            tokenizer.add_tokens([token(t) for t in missing])
            added += missing
            vocab = tokenizer.get_vocab()
        if strip and len(missing) < len(group):  # give tokens there before our spacing
            tokenizer.add_tokens([token(t) for t in group if t not in missing])
    for token in added_tokens(k, dialog):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if ids != [vocab[token]]:
            raise TokenizerError(f"the extended tokenizer splits {token!r} into {ids}; it "
                                 "cannot carry SpeechGPT's vocabulary")
    return added


def _metadata(tokenizer, k: int, base: str, base_size: int, spacing: str) -> dict:
    vocab = tokenizer.get_vocab()
    table = [vocab[unit_token(u)] for u in range(k)]
    contiguous = table == list(range(table[0], table[0] + k))
    return {
        **META_FORMAT.stamp(),
        "k": k,
        "unit_token": "<{unit}>",
        "first_unit_id": table[0],
        "units_contiguous": contiguous,
        "markers": {m: vocab[m] for m in MARKERS if m in vocab},
        "dialog": all(m in vocab for m in DIALOG_MARKERS),
        "eoa_is_text": True,
        "spacing": spacing,
        "legacy": getattr(tokenizer, "legacy", None),
        "base": base,
        "base_size": base_size,
        "size": len(tokenizer),
    }


# What save_pretrained and extend write into a tokenizer directory.
_TOKENIZER_DIR_FILES = frozenset(TOKENIZER_FILES) | {
    "vocab.txt", "spiece.model", "chat_template.jinja", "chat_template.json"}


def _check_replaceable(out: Path) -> None:
    """``-o DIR`` is replaced whole: only when it is new, empty or an sgpt tokenizer.

    Anything else (a model directory with weights, a corpus, ``.``) would be deleted.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise TokenizerError(f"{out}: is a file, not a directory for the tokenizer")
    names = {p.name for p in out.iterdir()}
    if names and names <= _TOKENIZER_DIR_FILES and META_FILE not in names:
        raise TokenizerError(f"{out}: not replaced: a tokenizer directory sgpt did not write "
                             f"(no {META_FILE}); give a new or empty directory")
    if names and not (META_FILE in names and names <= _TOKENIZER_DIR_FILES):
        others = sorted(names - _TOKENIZER_DIR_FILES)
        raise TokenizerError(
            f"{out}: not replaced: it is not an sgpt tokenizer directory and holds other "
            f"files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
            "give a new or empty directory")


def extend(base: str, output: str, k: int | None = None, dialog: bool = True,
           spacing: str | None = None) -> dict:
    """Extend the tokenizer at ``base`` and save it to ``output``; return its metadata.

    ``k`` and ``spacing`` default to what an sgpt tokenizer at ``base`` records, else to
    1000 and ``reference``. The directory appears whole or not at all (written beside it,
    then renamed).
    """
    _check_replaceable(Path(output))
    old: dict = {}
    meta_path = Path(base) / META_FILE
    if meta_path.is_file():  # an sgpt tokenizer: keep what it records of its own base
        try:
            old = json.loads(meta_path.read_text())
        except ValueError:
            raise TokenizerError(f"{meta_path}: not an sgpt tokenizer description") from None
        META_FORMAT.check(meta_path, old)
        if k is not None and k != old.get("k", k):
            raise TokenizerError(f"{base} already carries k={old['k']} unit tokens, not {k}")
    k = k if k is not None else old.get("k", 1000)
    spacing = spacing or old.get("spacing", "reference")
    if spacing not in SPACINGS:
        raise TokenizerError(f"unknown spacing {spacing!r} (use reference or plain)")
    tokenizer = load_hf_tokenizer(base, legacy=True if spacing == "reference" else None)
    base_name = old.get("base", base)
    base_size = old.get("base_size", len(tokenizer))
    extend_tokenizer(tokenizer, k, dialog, spacing)
    meta = _metadata(tokenizer, k, base_name, base_size, spacing)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer.save_pretrained(str(tmp))
        if meta["legacy"] is not None:  # transformers does not save it; loading needs it
            config_path = tmp / "tokenizer_config.json"
            config = json.loads(config_path.read_text())
            config["legacy"] = meta["legacy"]
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous.", dir=out.parent))
            os.replace(out, previous / "dir")
            os.replace(tmp, out)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return meta


def fingerprint(path: str) -> str:
    """sha256 over the tokenizer files of a directory (names and contents)."""
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = Path(path) / name
        if f.is_file():
            h.update(name.encode() + b"\0")
            h.update(f.read_bytes())
    return h.hexdigest()


def _split_patterns(markers: Iterable[str]) -> tuple[re.Pattern, re.Pattern]:
    """Patterns for a marker (the whole match) or a run of unit tokens (group 1 set).

    The first, fast one takes any stretch ``<digit…>`` of digits and angle brackets as a
    candidate run (one character class: the regex engine races through it); a candidate that
    is not a clean run of units is split again with the second, strict one. Every
    alternative starts with a literal ``<`` or ``[``, so plain text is skipped at the speed
    of a substring search.
    """
    def alternation(tails: Iterable[str]) -> str:
        return "|".join(re.escape(t) for t in sorted(tails, key=len, reverse=True))

    markers = list(markers)
    angle = [m[1:] for m in markers if m.startswith("<")]
    square = [m[1:] for m in markers if m.startswith("[")]
    if len(angle) + len(square) != len(markers):
        raise TokenizerError("markers must start with < or [")
    rest = (f"|{alternation(angle)}" if angle else "") + ")" + (
        rf"|\[(?:{alternation(square)})" if square else "")
    unit = r"(?:0|[1-9][0-9]*)>"
    marker = "(<(?:" + rest[1:] + ")" if angle else "((?!)" + rest + ")"
    fast = re.compile("(<[0-9][0-9<>]*>)|" + marker)
    strict = re.compile(f"(<{unit}(?:<{unit})*)|" + marker)
    return fast, strict


def _rust_backend(tokenizer):
    """The ``tokenizers.Tokenizer`` under a transformers tokenizer that only wraps one."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # older transformers
        from transformers import PreTrainedTokenizerFast as TokenizersBackend
    backend = getattr(tokenizer, "_tokenizer", None)
    if not isinstance(tokenizer, TokenizersBackend) or not hasattr(backend, "encode_batch_fast"):
        return None
    return backend


class _Fallback(Exception):
    """The fast path cannot vouch for a string: encode it whole instead."""


class SpeechTokenizer:
    """A transformers tokenizer that carries SpeechGPT's tokens, with a fast encoder.

    ``encode(text)`` equals ``tokenizer(text)["input_ids"]`` (``add_special_tokens`` as
    given) for any text.
    """

    def __init__(self, tokenizer, k: int | None = None, path: str | None = None):
        self.hf = tokenizer
        self.path = path
        vocab = tokenizer.get_vocab()
        if k is None:  # a directory without our metadata (the published SpeechGPT ones)
            k = 0
            while unit_token(k) in vocab:
                k += 1
        if k < 1 or any(unit_token(u) not in vocab for u in range(k)):
            raise TokenizerError("the tokenizer has no SpeechGPT unit tokens <0>, <1>, …: "
                                 "extend it first (sgpt-tokenize extend)")
        if SOSP not in vocab:
            raise TokenizerError("the tokenizer has no <sosp> token: extend it first "
                                 "(sgpt-tokenize extend)")
        self.k = k
        self.unit_ids = np.array([vocab[unit_token(u)] for u in range(k)], dtype=np.int64)
        self.markers = {m: vocab[m] for m in MARKERS if m in vocab}
        self.dialog = all(m in self.markers for m in DIALOG_MARKERS)
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        probe = tokenizer("a")["input_ids"]
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        at = next((i for i in range(len(probe)) if probe[i:i + len(bare)] == bare), None)
        if at is None:
            raise TokenizerError("cannot tell which special tokens the tokenizer adds")
        self.special_prefix = list(probe[:at])
        self.special_suffix = list(probe[at + len(bare):])
        self._anchor = self.markers[SOSP]
        self._split, self._strict = _split_patterns(self.markers)
        self._backend = _rust_backend(tokenizer)
        self._marker_ids = {m: np.array([i], dtype=np.int64) for m, i in self.markers.items()}
        self._empty = np.zeros(0, dtype=np.int64)
        self._prefix_ids = np.array(self.special_prefix, dtype=np.int64)
        self._suffix_ids = np.array(self.special_suffix, dtype=np.int64)
        self._cache: dict[tuple[str, bool, bool], list[int]] = {}

    @classmethod
    def from_dir(cls, path: str) -> SpeechTokenizer:
        """Load an extended tokenizer directory (ours, or a published SpeechGPT one)."""
        k = None
        meta = Path(path) / META_FILE
        if meta.is_file():
            try:
                data = json.loads(meta.read_text())
                META_FORMAT.check(meta, data)
                k = int(data["k"])
            except (ValueError, KeyError, TypeError):
                raise TokenizerError(f"{meta}: not an sgpt tokenizer description") from None
        return cls(load_hf_tokenizer(path), k, path)

    def __len__(self) -> int:
        return len(self.hf)

    def describe(self) -> dict:
        """What a packed data set records of the tokenizer it was built with."""
        import tokenizers
        import transformers

        return {
            "path": os.path.abspath(self.path) if self.path else None,
            "name_or_path": getattr(self.hf, "name_or_path", None),
            "class": type(self.hf).__name__,
            "size": len(self.hf),
            "k": self.k,
            "first_unit_id": int(self.unit_ids[0]),
            "markers": self.markers,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "special_prefix": self.special_prefix,
            "special_suffix": self.special_suffix,
            "fingerprint": fingerprint(self.path) if self.path else None,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        }

    # --- units ---------------------------------------------------------------------------

    def units_to_ids(self, units: Sequence[int] | np.ndarray) -> np.ndarray:
        """Token ids of unit ids (no <sosp>/<eosp>); ValueError for a unit outside 0..k-1."""
        u = np.asarray(units, dtype=np.int64)
        if u.size and (u.min() < 0 or u.max() >= self.k):
            bad = int(u[(u < 0) | (u >= self.k)][0])
            raise ValueError(f"unit {bad} is outside 0..{self.k - 1}")
        return self.unit_ids[u]

    def _run_ids(self, run: str) -> np.ndarray | None:
        """Ids of ``<u><u>…<u>`` if it is exactly a run of unit tokens below k, else None."""
        units = np.fromstring(run.translate(_DIGITS), dtype=np.int64, sep=" ")
        n = len(units)
        if (not n or run.count("<") != n or run.count(">") != n or run.count("><") != n - 1
                or units.min() < 0 or units.max() >= self.k
                or ("<0" in run and _LEADING_ZERO.search(run))):
            return None
        return self.unit_ids[units]

    # --- text ----------------------------------------------------------------------------

    def _segments(self, text: str, strict: bool = False) -> list:
        """``text`` as a list of id arrays (added tokens) and strings (text between them)."""
        parts = (self._strict if strict else self._split).split(text)
        segments: list = [parts[0]] if parts[0] else []
        for i in range(1, len(parts), 3):
            run, marker, after = parts[i], parts[i + 1], parts[i + 2]
            if marker is not None:
                segments.append(self._marker_ids[marker])
            else:
                ids = self._run_ids(run)
                if ids is not None:
                    segments.append(ids)
                else:  # a unit >= k is no token but text, as for the tokenizer; or not a
                    # clean run: split it strictly (text in it joins its neighbours)
                    for s in (self._split_run(run) if strict else self._segments(run, True)):
                        if isinstance(s, str) and segments and isinstance(segments[-1], str):
                            segments[-1] += s
                        else:
                            segments.append(s)
            if after:
                if segments and isinstance(segments[-1], str):
                    segments[-1] += after
                else:
                    segments.append(after)
        return segments

    def _split_run(self, run: str) -> list:
        out: list = []
        for token in run[1:-1].split("><"):
            unit = int(token)
            if unit < self.k:
                out.append(self.unit_ids[unit:unit + 1])
            elif out and isinstance(out[-1], str):
                out[-1] += f"<{token}>"
            else:
                out.append(f"<{token}>")
        return out

    def _fill_cache(self, keys: Iterable[tuple[str, bool, bool]]) -> None:
        wanted = list(dict.fromkeys(keys))
        keys = [k for k in wanted if k not in self._cache]
        if not keys:
            return
        if len(self._cache) + len(keys) > CACHE_LIMIT:
            self._cache.clear()
            keys = wanted
        anchor = SOSP
        texts = [(anchor if left else "") + piece + (anchor if right else "")
                 for piece, left, right in keys]
        encoded = self._encode_texts(texts)
        a = self._anchor
        for key, ids in zip(keys, encoded):
            _, left, right = key
            ids = list(ids)
            if left:
                if not ids or ids[0] != a:
                    raise _Fallback
                ids = ids[1:]
            if right:
                if not ids or ids[-1] != a:
                    raise _Fallback
                ids = ids[:-1]
            if a in ids:
                raise _Fallback
            self._cache[key] = np.array(ids, dtype=np.int64)

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Ids of texts without special tokens: through the Rust tokenizer itself where the
        transformers tokenizer is a thin layer over one (it adds nothing to these ids; the
        parity tests hold it to that), else through the transformers tokenizer."""
        if self._backend is not None:
            return [e.ids for e in self._backend.encode_batch_fast(
                texts, add_special_tokens=False)]
        return self.hf(texts, add_special_tokens=False)["input_ids"]

    def _encode_segments(self, segments: list, add_special_tokens: bool) -> np.ndarray:
        parts: list = [self._prefix_ids] if add_special_tokens else []
        last = len(segments) - 1
        for i, s in enumerate(segments):
            parts.append(self._cache[(s, i > 0, i < last)] if isinstance(s, str) else s)
        if add_special_tokens:
            parts.append(self._suffix_ids)
        return np.concatenate(parts) if parts else self._empty

    def encode_arrays(self, texts: Sequence[str], add_special_tokens: bool = True
                      ) -> list[np.ndarray]:
        """Token ids (int64 arrays) of each text: the fast path, batched."""
        split = [self._segments(t) for t in texts]
        keys = []
        for segments in split:
            last = len(segments) - 1
            keys += [(s, i > 0, i < last) for i, s in enumerate(segments) if isinstance(s, str)]
        try:
            self._fill_cache(keys)
            return [self._encode_segments(s, add_special_tokens) for s in split]
        except _Fallback:
            return [self._encode_one(t, add_special_tokens) for t in texts]

    def _encode_one(self, text: str, add_special_tokens: bool) -> np.ndarray:
        segments = self._segments(text)
        last = len(segments) - 1
        try:
            self._fill_cache((s, i > 0, i < last) for i, s in enumerate(segments)
                             if isinstance(s, str))
            return self._encode_segments(segments, add_special_tokens)
        except _Fallback:
            ids = self.hf(text, add_special_tokens=add_special_tokens)["input_ids"]
            return np.asarray(ids, dtype=np.int64)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``, as ``tokenizer(text)["input_ids"]`` gives them."""
        return self.encode_arrays([text], add_special_tokens)[0].tolist()

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True
                     ) -> list[list[int]]:
        return [ids.tolist() for ids in self.encode_arrays(texts, add_special_tokens)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of token ids, special tokens included, spaces as the tokens have them."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False,
                              clean_up_tokenization_spaces=False)
