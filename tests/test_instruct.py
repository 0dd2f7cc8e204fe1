"""SpeechInstruct construction: stage-1 lines, cross-modal and chain-of-modality examples,
and quadruplets spoken by a real TTS command and encoded by the real unit encoder."""

import shutil
import sys

import numpy as np
import pytest

from sgpt.core.errors import AudioError, RecordError, SgptError
from sgpt.core.stream import merge_runs
from sgpt.lm.prompts import ASR_INSTRUCTIONS, PREFIX, TTS_INSTRUCTIONS
from sgpt.tokenize.instruct import (
    Quadrupleter,
    TTSCommand,
    chain_of_modality_examples,
    cross_modal_examples,
    pretrain_text,
)

QUAD = {"id": "q1", "question_text": "What is the time?", "question_units": [4, 4, 5, 6],
        "answer_text": "It is noon.", "answer_units": [7, 8, 8, 9]}


def test_merge_runs():
    assert merge_runs([5, 5, 7, 5, 5, 5]) == [5, 7, 5]
    assert merge_runs([]) == []


def test_pretrain_text():
    assert pretrain_text({"id": "a", "units": [3, 3, 1, 2, 2]}, 1000) == "<sosp><3><1><2><eosp>"
    assert pretrain_text({"id": "a", "units": [3, 3]}, 10, dedup=False) == "<sosp><3><3><eosp>"


@pytest.mark.parametrize("record, reason", [
    ({"id": "a", "units": [1, 1000]}, "unit 1000 in 'units' is outside 0..999"),
    ({"id": "a", "units": [-1]}, "outside"),
    ({"id": "a", "units": []}, "'units' is empty"),
    ({"id": "a"}, "no 'units' key"),
    ({"id": "a", "units": [1, "2"]}, "list of integers"),
    ({"id": "a", "units": [True]}, "list of integers"),
])
def test_pretrain_rejects_bad_units(record, reason):
    with pytest.raises(RecordError, match=reason) as e:
        pretrain_text(record, 1000)
    assert e.value.where == "a"


def test_cross_modal_examples():
    record = {"id": "u1", "units": [1, 1, 2], "text": "  Hello there.\n"}
    asr, tts = cross_modal_examples(record, 1000, seed=0)
    assert asr["id"] == "u1:asr" and tts["id"] == "u1:tts"
    assert asr["prefix"] == tts["prefix"] == PREFIX
    head, rest = asr["plain_text"].split(" This is input: ")
    assert head[len("[Human]: "):] in ASR_INSTRUCTIONS
    assert rest == "<sosp><1><2><eosp><eoh> [SpeechGPT]: Hello there.<eoa> "
    head, rest = tts["plain_text"].split(" This is input: ")
    assert head[len("[Human]: "):] in TTS_INSTRUCTIONS
    assert rest == "Hello there.<eoh> [SpeechGPT]: <sosp><1><2><eosp><eoa> "
    assert set(asr) == {"id", "prefix", "plain_text"}
    assert cross_modal_examples(record, 1000, seed=0, tasks=["tts"]) == [tts]


def test_cross_modal_instruction_choice_is_seeded():
    records = [{"id": f"u{i}", "units": [1], "text": "x"} for i in range(200)]
    a = [cross_modal_examples(r, 10, seed=0) for r in records]
    assert a == [cross_modal_examples(r, 10, seed=0) for r in records]
    b = [cross_modal_examples(r, 10, seed=1) for r in records]
    assert sum(x != y for x, y in zip(a, b)) > 150
    phrasings = {ex[0]["plain_text"].split(" This is input")[0] for ex in a}
    assert len(phrasings) > 70  # 200 records spread over the 110 phrasings


@pytest.mark.parametrize("record, reason", [
    ({"id": "u", "units": [1], "text": "a <eoh> b"}, "markup '<eoh>'"),
    ({"id": "u", "units": [1], "text": "[SpeechGPT]: hi"}, "markup"),
    ({"id": "u", "units": [1], "text": "<sosp><5><eosp>"}, "markup"),
    ({"id": "u", "units": [1], "text": "unit <123>"}, "markup '<123>'"),
    ({"id": "u", "units": [1], "text": ""}, "'text' is empty"),
    ({"id": "u", "units": [1]}, "no 'text' key"),
    ({"id": "u", "text": "x"}, "no 'units' key"),
    ({"id": "u", "units": [1, 5000], "text": "x"}, "unit 5000"),
])
def test_cross_modal_rejects_bad_records(record, reason):
    with pytest.raises(RecordError, match=reason) as e:
        cross_modal_examples(record, 1000)
    assert e.value.where == "u"


def test_chain_of_modality_examples():
    out = chain_of_modality_examples(QUAD, 1000)
    assert [o["id"] for o in out] == ["q1:s2s", "q1:s2t", "q1:t2s", "q1:t2t"]
    assert out[0]["plain_text"] == (
        "[Human]: <sosp><4><5><6><eosp><eoh>. [SpeechGPT]: What is the time?; [ta] It is "
        "noon.; [ua] <sosp><7><8><9><eosp><eoa>.")
    assert out[3]["plain_text"] == (
        "[Human]: What is the time?<eoh>. [SpeechGPT]: [ta] It is noon.<eoa>.")
    assert all(o["prefix"] == PREFIX for o in out)


def test_chain_of_modality_needs_only_what_its_modes_use():
    text_only = {k: v for k, v in QUAD.items() if not k.endswith("units")}
    assert len(chain_of_modality_examples(text_only, 1000, modes=["t2t"])) == 1
    with pytest.raises(RecordError, match="no 'question_units', 'answer_units' keys"):
        chain_of_modality_examples(text_only, 1000)
    with pytest.raises(RecordError, match="markup"):
        chain_of_modality_examples({**QUAD, "answer_text": "ok [ua] <sosp>"}, 1000)
    with pytest.raises(RecordError, match="'answer_units' is empty"):
        chain_of_modality_examples({**QUAD, "answer_units": []}, 1000)
    with pytest.raises(RecordError, match="unit 9 in 'answer_units' is outside 0..8"):
        chain_of_modality_examples(QUAD, 9)


# --- TTS and quadruplets ------------------------------------------------------------------

# A stand-in TTS command: a sine whose length follows the text, as a WAV on stdout.
SINE_TTS = (f"{sys.executable} -c \"import io, sys, numpy as np, soundfile as sf; "
            "n = 1600 * len(sys.argv[1]); b = io.BytesIO(); "
            "x = 0.3 * np.sin(np.arange(n) * (0.05 + 0.01 * len(sys.argv[2]))); "
            "sf.write(b, x, 16000, format='WAV'); sys.stdout.buffer.write(b.getvalue())\" "
            "{text} {voice}")


def test_tts_command_with_text_argument_and_stdout():
    wave = TTSCommand(SINE_TTS)("hello", "v1")
    assert wave.dtype == np.float32 and len(wave) == 1600 * 5


def test_tts_command_failures():
    with pytest.raises(SgptError, match="not found"):
        TTSCommand("no-such-tts-program {text}")("x", "v")
    with pytest.raises(AudioError, match="exit status 3"):
        TTSCommand(f"{sys.executable} -c 'import sys; sys.exit(3)'")("x", "v")
    with pytest.raises(AudioError, match="empty audio|not audio"):
        TTSCommand(f"{sys.executable} -c 'pass'")("x", "v")
    with pytest.raises(SgptError, match="--tts-cmd"):
        TTSCommand("unbalanced 'quote")


@pytest.fixture(scope="module")
def mfcc_encoder(tmp_path_factory):
    from sgpt.units.speech_encoder import load_speech_encoder

    km = tmp_path_factory.mktemp("km") / "km50.npy"
    np.save(km, np.random.default_rng(0).standard_normal((50, 39)).astype(np.float32))
    return load_speech_encoder("mfcc", str(km))


def test_quadruplets_from_text_pairs_with_espeak(mfcc_encoder):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    pairs = [{"id": "p0", "question": "What is the weather like?", "answer": "It is sunny.",
              "topic": "weather"},
             {"id": "p1", "question_text": "Who wrote it?", "answer_text": "Nobody knows."},
             {"id": "p2", "question": "Bad <eoh> question", "answer": "x"},
             {"id": "p3", "question": "No answer here"}]
    make = Quadrupleter(mfcc_encoder, TTSCommand(), seed=3, jobs=2)
    out = make(pairs)
    assert [type(o).__name__ for o in out] == ["dict", "dict", "RecordError", "RecordError"]
    q = out[0]
    assert q["question_text"] == "What is the weather like?" and q["topic"] == "weather"
    assert "question" not in q and "answer" not in q
    for key in ("question_units", "answer_units"):
        units = q[key]
        assert len(units) > 5 and all(0 <= u < 50 for u in units)
        assert all(a != b for a, b in zip(units, units[1:]))  # deduplicated
    assert q["units_meta"]["encoder"] == "mfcc" and q["units_meta"]["k"] == 50
    assert q["voices"] == [make.voice("p0", "question"), make.voice("p0", "answer")]
    assert "markup" in out[2].reason and "answer" in out[3].reason
    # the same seed gives the same voices and units; the result feeds chain-of-modality
    assert make(pairs[:1]) == out[:1]
    assert len(chain_of_modality_examples(q, 50)) == 4


def test_quadruplets_vary_voices(mfcc_encoder):
    make = Quadrupleter(mfcc_encoder, TTSCommand(SINE_TTS), voices=["a", "bbbbbbbbbb"],
                        seed=0)
    pairs = [{"id": f"p{i}", "question": "Why is that?", "answer": "Because."}
             for i in range(12)]
    voices = {v for q in make(pairs) for v in q["voices"]}
    assert voices == {"a", "bbbbbbbbbb"}


def test_quadruplets_name_a_failing_tts(mfcc_encoder):
    make = Quadrupleter(mfcc_encoder, TTSCommand(f"{sys.executable} -c 'import sys; "
                                                 "sys.exit(2)'"))
    (err,) = make([{"id": "p9", "question": "a", "answer": "b"}])
    assert isinstance(err, RecordError) and err.where == "p9"
    assert err.reason.startswith("question: TTS command failed")
