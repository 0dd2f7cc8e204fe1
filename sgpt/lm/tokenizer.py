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
transformers tokenizer gives for the whole string. Unit tokens are found for a whole batch
in one numpy pass and map to ids through a table. The text between runs of units (system
prefix, instruction, markers, transcript) is cached whole, by its context (a unit token
before it or not, after it or not), once it has been seen twice. A text not cached is its
markers' ids and its pieces' (the text between markers), and a piece's ids are what the
tokenizer gives it in the context it has in the string (after an added token or at the
start, before one or at the end), so whitespace handling around added tokens and
sentencepiece's word-start marker come out as they do for the whole string: for the
tokenizers it knows exactly (ByteLevel or Metaspace BPE), cut into words that BPE cannot
join across, each word's ids cached; for any other, through the tokenizer itself.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from itertools import chain
from pathlib import Path

import numpy as np

from sgpt.core.errors import SgptError
from sgpt.core.files import make_temp_dir
from sgpt.core.formats import FileFormat
from sgpt.lm.prompts import DIALOG_MARKERS, MARKERS, SOSP, UNIT_MARKERS, added_tokens, unit_token

META_FILE = "sgpt_tokenizer.json"
# Files that define a tokenizer (hashed into its fingerprint); model weights are not.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                   META_FILE)
CACHE_LIMIT = 200_000  # texts kept encoded, or remembered as seen once
WORD_CACHE_LIMIT = 500_000  # words kept encoded


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
    tmp = make_temp_dir(out.parent, f".{out.name}.")
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


# What Rust's char::is_whitespace (the White_Space property) takes: the whitespace an added
# token with lstrip/rstrip eats.
_WHITE_SPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
# ByteLevel text cut before each space that follows a character that is not whitespace
# (the same set for its regex engine: \s). GPT-2's pre-tokenization pattern never matches
# such a character and the space together ('s|'t|…| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|
# \s+(?!\S)|\s+), so each part pre-tokenizes alone as in the whole.
_BYTE_LEVEL_CUT = re.compile(f"(?<=[^{_WHITE_SPACE}])(?= )")
# ByteLevel parts the word encoder pre-tokenizes itself: printable ASCII, tab, newline,
# carriage return. Over these, letters, digits and whitespace are the same classes for every
# regex engine and Unicode version, and _BYTE_LEVEL_WORDS is GPT-2's pattern spelled out.
_WORD_SAFE = re.compile(r"[\t\n\r -~]*")
_BYTE_LEVEL_WORDS = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\t\n\r A-Za-z0-9]+"
    r"|[\t\n\r ]+(?![^\t\n\r ])|[\t\n\r ]+")
# A metaspace string cut before every ▁ that follows another character. Where no vocabulary
# token has such a ▁ (_ACROSS_METASPACE finds none), no BPE merge crosses the cuts, so each
# part gets alone the ids it gets in the whole.
_METASPACE_WORDS = re.compile("▁*[^▁]+|▁+")
_ACROSS_METASPACE = re.compile("[^▁]▁")
# Probe pieces: the word encoder is used only if it gives, for each of these in each
# context, the ids the tokenizer gives.
_PROBES = ("a", " a", "a ", "  two  spaces  ", " ", "\n", "a\n\nb\n ", "\t x\r\n y", "x\t",
           "it's I'll 'S x'sa don't", "3.14 (22/7)! e-mail: a@b.c 42x", "Hello, world.<eoa> ",
           ": Transcribe this. This is input: ", "A;B:C.", "...", " Café «crème», naïve — 日本語 ✓",
           "x\u3000 y\u00a0z \u2028 q", "\x1c a\x1d", "\x0b\x0c x \x85", "x ▁ y▁▁z", "😀 🙂x")
# A string holding a unit token, or able to share characters with one in some text.
_UNIT_OVERLAP = re.compile(r"<[0-9]|[0-9]>|<$|^>|^[0-9]+$")


def _overlap(a: str, b: str) -> bool:
    """Whether matches of ``a`` and ``b`` can share characters in some text."""
    return (a in b or b in a or any(a.endswith(b[:i]) for i in range(1, len(b)))
            or any(b.endswith(a[:i]) for i in range(1, len(a))))


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-to-character map (ByteLevel spells words in it), for the ASCII bytes."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in kept]
    table = {b: chr(b) for b in kept} | {b: chr(256 + i) for i, b in enumerate(moved)}
    return {b: table[b] for b in range(128)}


class _WordEncoder:
    """Ids of text between added tokens as the Rust tokenizer gives them, part by part.

    On a new piece of text the Rust tokenizer spends most of its time in pre-tokenization
    (its regex engine) and in BPE over long words. Here a piece is cut where the tokenizer
    cannot join across (``_BYTE_LEVEL_CUT``, ``_METASPACE_WORDS``), and each part's ids come
    from a cache, else from the BPE model (``_encode``). ``for_backend`` takes only
    pipelines this knows exactly; the caller strips the whitespace that added tokens eat
    and keeps other added tokens away.
    """

    def __init__(self, backend, prepend: str | None):
        self.backend = backend
        self.prepend = prepend  # Metaspace's prepend_scheme (always, first, never); None: ByteLevel
        self.alphabet = None if prepend else str.maketrans(_byte_level_alphabet())
        self.cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def for_backend(cls, backend) -> _WordEncoder | None:
        from tokenizers import models, pre_tokenizers

        model, pre = backend.model, backend.pre_tokenizer
        if backend.normalizer is not None or not isinstance(model, models.BPE) or model.dropout:
            return None
        if isinstance(pre, pre_tokenizers.ByteLevel):
            if pre.use_regex and not pre.add_prefix_space:
                return cls(backend, None)
        elif isinstance(pre, pre_tokenizers.Metaspace):
            vocab = backend.get_vocab()
            if (pre.replacement == "▁" and not pre.split and "▁" in vocab
                    and not any(map(_ACROSS_METASPACE.search, vocab))):
                return cls(backend, pre.prepend_scheme)
        return None

    def _parts(self, text: str, first: bool) -> list[str]:
        """``text`` cut where the tokenizer cannot join across; metaspace words may keep
        spaces for their ▁ (the cache key; the model sees ▁)."""
        if self.prepend is not None and not text.startswith((" ", "▁")) and (
                self.prepend == "always" or self.prepend == "first" and first):
            text = " " + text  # the ▁ Metaspace prepends
        if text.isprintable() and "  " not in text and "▁" not in text:
            # no whitespace but single spaces, no ▁ before one (and no \0): every space is
            # a cut (a leading "" part has no ids)
            return text.replace(" ", "\0 ").split("\0")
        if self.prepend is None:
            return _BYTE_LEVEL_CUT.split(text)
        return _METASPACE_WORDS.findall(text.replace(" ", "▁"))

    def ids(self, text: str, first: bool) -> tuple[int, ...]:
        """Ids of a non-empty piece; ``first``: the piece starts its string."""
        cache, out = self.cache, []
        for part in self._parts(text, first):
            ids = cache.get(part)
            if ids is None:
                ids = self._encode(part)
            out += ids
        return tuple(out)

    def _encode(self, part: str) -> tuple[int, ...]:
        """Ids of a part new to the cache, cached: a metaspace word through the BPE model; a
        ByteLevel part pre-tokenized here when it is _WORD_SAFE, else by the Rust tokenizer."""
        if len(self.cache) >= WORD_CACHE_LIMIT:
            self.cache.clear()
        model = self.backend.model
        if self.alphabet is None:
            ids = tuple(t.id for t in model.tokenize(part.replace(" ", "▁")))
        elif _WORD_SAFE.fullmatch(part):
            ids = tuple(t.id for word in _BYTE_LEVEL_WORDS.findall(part)
                        for t in model.tokenize(word.translate(self.alphabet)))
        else:
            ids = tuple(self.backend.encode(part, add_special_tokens=False).ids)
        self.cache[part] = ids
        return ids


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
        self._backend = _rust_backend(tokenizer)
        # Unit tokens (found by _units) and markers (_split_markers) are found by their
        # spelling. That is what the tokenizer splits out when all of them are added tokens
        # with one whitespace handling, none single_word, and no other added token can share
        # characters with them.
        decoder = tokenizer.added_tokens_decoder
        ours = {*self.unit_ids.tolist(), *self.markers.values()}
        flags = {(t.lstrip, t.rstrip, t.single_word) for i, t in decoder.items() if i in ours}
        others = [t.content for i, t in decoder.items() if i not in ours]
        self._exact = (len(flags) == 1 and not next(iter(flags))[2]
                       and ours <= decoder.keys()
                       and not any(_UNIT_OVERLAP.search(o) for o in others)
                       and not any(_overlap(o, m) for o in others for m in self.markers))
        self._eats_before, self._eats_after = next(iter(flags))[:2] if flags else (False, False)
        self._others = re.compile("|".join(map(re.escape, others))) if others else None
        self._marker_split = re.compile(f"({'|'.join(map(re.escape, self.markers))})")
        self._marker_tags = [(m, f"\0{m}\0") for m in self.markers]
        self._digits = len(str(k - 1))
        # unit ids as Python ints: taking from it shares the int objects instead of making
        # one per token
        self._objects = np.array(self.unit_ids.tolist(), dtype=object)
        # ids of text (between unit runs, or between any two of our tokens), by (one of our
        # tokens before it, one after it) and the text; and the texts encoded once
        contexts = [(left, right) for left in (False, True) for right in (False, True)]
        self._cache: dict[tuple[bool, bool], dict[str, tuple[int, ...]]] = {
            context: {} for context in contexts}
        self._seen: dict[tuple[bool, bool], set[str]] = {context: set() for context in contexts}
        self._words = _WordEncoder.for_backend(self._backend) if self._backend else None
        if self._words is not None and not self._words_agree():
            self._words = None

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

    # --- text ----------------------------------------------------------------------------

    def _units(self, bulk: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start, end and unit of every unit token in ``bulk`` (which ends with
        ``_digits + 2`` characters that start none).

        One vectorised pass over the code points, for a whole batch: a unit token is ``<``,
        1 to len(str(k-1)) digits without a leading zero, ``>``, of value below k (``<1000>``
        and ``<01>`` are text, as for the tokenizer). None holds a character that starts
        another, so none overlap.
        """
        if bulk.isascii():
            codes = np.frombuffer(bulk.encode("ascii"), dtype=np.uint8)
        else:  # UTF-16 has a unit per character, unless one is beyond the BMP
            codes = np.frombuffer(bulk.encode("utf-16-le", "surrogatepass"), dtype=np.uint16)
            if len(codes) != len(bulk):
                codes = np.frombuffer(bulk.encode("utf-32-le", "surrogatepass"),
                                      dtype=np.uint32)
        cand = np.flatnonzero(codes == ord("<"))
        digit = codes[1:].take(cand).astype(np.int64) - ord("0")
        alive = (digit >= 0) & (digit < 10)
        lead = digit != 0
        value = digit
        size = np.zeros(len(cand), dtype=np.int32)
        for m in range(2, self._digits + 2):  # the character m after the candidate
            c = codes[m:].take(cand)
            closed = alive & (c == ord(">"))
            if m > 2:
                closed &= lead
            size += closed * np.int32(m + 1)
            if m <= self._digits:
                digit = c.astype(np.int64) - ord("0")
                alive &= (digit >= 0) & (digit < 10)
                value = np.where(alive, value * 10 + digit, value)
        keep = np.flatnonzero(size * (value < self.k))
        start = cand.take(keep)
        return start, start + size.take(keep), value.take(keep)

    def _encode_lists(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
        """Token ids of each text: the fast path, batched.

        The texts are scanned together for unit tokens (``_units``); each text is then runs
        of adjacent unit tokens, with a span of text before each run and one after the last
        (any of them empty, markers in them). A span's ids depend on the span and on whether
        unit tokens stand before and after it, and are cached so (``_lookup``): the system
        prefix, an instruction, the markers around a run come back from one dict each. A
        text's ids are its spans' and runs' joined: no numpy array, tuple or list per token.
        """
        if sum(map(len, [*self._cache.values(), *self._seen.values()])) > CACHE_LIMIT:
            self.clear_cache()
        n = len(texts)
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=n)
        end = np.cumsum(lengths + 1) - 1
        begin = end - lengths
        # \0 ends any token, so none spans two texts; _units looks ahead into the padding
        bulk = "\0".join([*texts, "\0" * (self._digits + 2)])
        start, stop, units = self._units(bulk)
        fresh = np.ones(len(start), dtype=bool)
        fresh[1:] = start[1:] != stop[:-1]
        heads = np.flatnonzero(fresh)  # the first unit token of each run
        bounds = np.append(heads, len(start))
        run_stop = stop[bounds[1:] - 1]
        owner = np.searchsorted(begin, start[heads], side="right") - 1
        first = np.ones(len(heads), dtype=bool)  # the first run of its text
        first[1:] = owner[1:] != owner[:-1]
        last = np.append(first[1:], True)[:len(heads)]  # the last run of its text
        before = np.where(first, begin[owner], np.roll(run_stop, 1))
        after = begin.copy()
        after[owner[last]] = run_stop[last]
        runs = np.bincount(owner, minlength=n)
        spans = self._lookup([bulk[a:b] for a, b in zip(before.tolist(), start[heads].tolist())],
                             (~first).tolist(), True)
        tails = self._lookup([bulk[a:b] for a, b in zip(after.tolist(), end.tolist())],
                             (runs > 0).tolist(), False)
        objects = self._objects.take(units).tolist()
        bounds = bounds.tolist()
        prefix = self.special_prefix if add_special_tokens else []
        suffix = self.special_suffix if add_special_tokens else []
        out = []
        low = 0
        for count, tail in zip(runs.tolist(), tails):
            ids = prefix.copy()
            for run in range(low, low + count):
                ids += spans[run]
                ids += objects[bounds[run]:bounds[run + 1]]
            ids += tail
            ids += suffix
            out.append(ids)
            low += count
        return out

    def _lookup(self, texts: list[str], lefts: list[bool], right: bool
                ) -> list[tuple[int, ...]]:
        """The ids of texts with one of our tokens before them where ``lefts`` says and one
        after them where ``right`` does: cached, else encoded (``_encode_new``)."""
        after, alone = self._cache[True, right], self._cache[False, right]
        found = [(after if left else alone).get(s) for s, left in zip(texts, lefts)]
        if None in found:
            new = self._encode_new({(s, left, right)
                                    for s, left, ids in zip(texts, lefts, found) if ids is None})
            found = [new[s, left, right] if ids is None else ids
                     for s, left, ids in zip(texts, lefts, found)]
        return found

    def _split_markers(self, text: str) -> list[str]:
        """``text`` as [piece, marker, piece, …, marker, piece]. Tagging the markers with \0
        (no marker of MARKERS holds another) and splitting there is a few times faster than
        the regex, which has to try every position: its alternatives start with < or [."""
        if "\0" in text:
            return self._marker_split.split(text)
        for marker, tagged in self._marker_tags:
            text = text.replace(marker, tagged)
        return text.split("\0")

    def _encode_new(self, keys: set[tuple[str, bool, bool]]
                    ) -> dict[tuple[str, bool, bool], tuple[int, ...]]:
        """Ids of texts (text, our token before, our token after) not in the cache.

        A text with markers is its pieces' ids (cached or new) and the markers'; a piece goes
        through the word encoder where it can take it, else through the tokenizer in an
        anchored context. A text enters the cache the second time it is encoded: one-off
        texts (a new transcript) leave it, and the collector, alone.
        """
        todo: dict[tuple[str, bool, bool], None] = {}
        spans = []
        for key in keys:
            text, left, right = key
            parts: list = self._split_markers(text)
            if len(parts) == 1:
                todo[key] = None
                continue
            last = len(parts) - 1
            holes = []  # the pieces not cached: (index, key)
            for i in range(1, last, 2):
                parts[i] = (self.markers[parts[i]],)
            for i in range(0, last + 1, 2):
                context = (left or i > 0, right or i < last)
                ids = self._cache[context].get(parts[i])
                if ids is None:
                    piece = (parts[i], *context)
                    todo[piece] = None
                    holes.append((i, piece))
                parts[i] = ids
            spans.append((key, parts, holes))
        words: list[tuple[str, bool, bool]] = []
        anchored: list[tuple[str, bool, bool]] = []
        for key in todo:
            other = self._others is not None and self._others.search(key[0])
            (anchored if self._words is None or other else words).append(key)
        new = dict(zip(words, self._word_ids(words)))
        new.update(zip(anchored, self._anchored_ids(anchored)))
        for key, parts, holes in spans:
            for i, piece in holes:
                parts[i] = new[piece]
            new[key] = tuple(chain.from_iterable(parts))
        for (text, left, right), ids in new.items():
            seen = self._seen[left, right]
            if text in seen:
                self._cache[left, right][text] = ids
            else:
                seen.add(text)
        return new

    def _word_ids(self, keys: list[tuple[str, bool, bool]]) -> list[tuple[int, ...]]:
        """Ids of pieces through ``_words``, the whitespace that tokens eat stripped first."""
        out = []
        for piece, left, right in keys:
            if left and self._eats_after:
                piece = piece.lstrip(_WHITE_SPACE)
            if right and self._eats_before:
                piece = piece.rstrip(_WHITE_SPACE)
            out.append(self._words.ids(piece, not left) if piece else ())
        return out

    def _anchored_ids(self, keys: list[tuple[str, bool, bool]]) -> list[tuple[int, ...]]:
        """Ids of pieces, each encoded between the added tokens (``<sosp>`` standing in for
        any: they share one whitespace handling) that surround it in its string."""
        if not keys:
            return []
        texts = [(SOSP if left else "") + piece + (SOSP if right else "")
                 for piece, left, right in keys]
        a = self._anchor
        out = []
        for (_, left, right), ids in zip(keys, self._encode_texts(texts)):
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
            out.append(tuple(ids))
        return out

    def _words_agree(self) -> bool:
        """Whether the word encoder gives the tokenizer's ids for every probe, in context."""
        keys = [(p, left, right) for p in _PROBES for left in (False, True)
                for right in (False, True)]
        try:
            expected = self._anchored_ids(keys)
        except _Fallback:
            return False
        return self._word_ids(keys) == expected

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Ids of texts without special tokens: through the Rust tokenizer itself where the
        transformers tokenizer is a thin layer over one (it adds nothing to these ids; the
        parity tests hold it to that), else through the transformers tokenizer."""
        if self._backend is not None:
            return [e.ids for e in self._backend.encode_batch_fast(
                texts, add_special_tokens=False)]
        return self.hf(texts, add_special_tokens=False)["input_ids"]

    def clear_cache(self) -> None:
        """Forget the texts encoded so far: each text is new again. The word encoder keeps
        its words, as the Rust tokenizer keeps its BPE cache."""
        for texts in (*self._cache.values(), *self._seen.values()):
            texts.clear()

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True
                     ) -> list[list[int]]:
        """Token ids of each text, as ``tokenizer(texts)["input_ids"]`` gives them."""
        if not isinstance(texts, list):
            texts = list(texts)
        if not texts:
            return []
        if not self._exact:
            return self.hf(texts, add_special_tokens=add_special_tokens)["input_ids"]
        try:
            return self._encode_lists(texts, add_special_tokens)
        except _Fallback:
            return [self._encode_one(t, add_special_tokens) for t in texts]

    def _encode_one(self, text: str, add_special_tokens: bool) -> list[int]:
        try:
            return self._encode_lists([text], add_special_tokens)[0]
        except _Fallback:
            return self.hf(text, add_special_tokens=add_special_tokens)["input_ids"]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``, as ``tokenizer(text)["input_ids"]`` gives them."""
        return self.encode_batch([text], add_special_tokens)[0]

    def encode_arrays(self, texts: Sequence[str], add_special_tokens: bool = True
                      ) -> list[np.ndarray]:
        """Token ids (int64 arrays) of each text."""
        return [np.fromiter(ids, dtype=np.int64, count=len(ids))
                for ids in self.encode_batch(texts, add_special_tokens)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of token ids, special tokens included, spaces as the tokens have them."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False,
                              clean_up_tokenization_spaces=False)
