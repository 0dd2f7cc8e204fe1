"""Prompt text: the reference's formats, the instruction banks, the markup check."""

import pytest

from sgpt.core.errors import RecordError
from sgpt.lm.prompts import (
    ASR_INSTRUCTIONS,
    INSTRUCTIONS,
    MARKERS,
    PREFIX,
    TTS_INSTRUCTIONS,
    added_tokens,
    chain_of_modality,
    check_text,
    choose,
    cross_modal,
    find_markup,
    inference_prompt,
    task_question,
    units_text,
)

# The reference's META_INSTRUCTION (speechgpt/src/infer/cli_infer.py), character for character.
REFERENCE_PREFIX = "You are an AI assistant whose name is SpeechGPT.\n- SpeechGPT is a intrinsic cross-modal conversational language model that is developed by Fudan University.  SpeechGPT can understand and communicate fluently with human through speech or text chosen by the user.\n- It can perceive cross-modal inputs and generate cross-modal outputs.\n"  # noqa: E501


def test_prefix_is_the_reference_meta_instruction():
    assert PREFIX == REFERENCE_PREFIX
    assert "University.  SpeechGPT" in PREFIX


def test_cross_modal_matches_the_published_example():
    # The SpeechInstruct-cross-modal example of the reference README (units shortened).
    units = [661, 588, 604, 157, 596]
    expected = ("[Human]: Try to speak out this sentence, please. This is input: The alchemist "
                "rode in front, with the falcon on his shoulder.<eoh> [SpeechGPT]: "
                "<sosp><661><588><604><157><596><eosp><eoa> ")
    example = cross_modal("Try to speak out this sentence, please.",
                          "The alchemist rode in front, with the falcon on his shoulder.",
                          units_text(units))
    assert example == {"prefix": REFERENCE_PREFIX, "plain_text": expected}


def test_chain_of_modality_matches_the_published_example_and_has_four_modes():
    expected = ("[Human]: <sosp><661><987><511><eosp><eoh>. [SpeechGPT]: What is a bad term "
                "for poop?; [ta] A bad term for poop is excrement.; [ua] "
                "<sosp><497><63><eosp><eoa>.")
    args = ("What is a bad term for poop?", "A bad term for poop is excrement.",
            [661, 987, 511], [497, 63])
    assert chain_of_modality("s2s", *args) == {"prefix": PREFIX, "plain_text": expected}
    assert chain_of_modality("s2t", *args)["plain_text"] == (
        "[Human]: <sosp><661><987><511><eosp><eoh>. [SpeechGPT]: What is a bad term for "
        "poop?; [ta] A bad term for poop is excrement.<eoa>.")
    assert chain_of_modality("t2s", *args)["plain_text"] == (
        "[Human]: What is a bad term for poop?<eoh>. [SpeechGPT]: [ta] A bad term for poop is "
        "excrement.; [ua] <sosp><497><63><eosp><eoa>.")
    assert chain_of_modality("t2t", *args)["plain_text"] == (
        "[Human]: What is a bad term for poop?<eoh>. [SpeechGPT]: [ta] A bad term for poop is "
        "excrement.<eoa>.")


def test_inference_prompt_is_the_reference_template():
    assert inference_prompt("Who is Lebron James?") == (
        REFERENCE_PREFIX + "[Human]: Who is Lebron James? <eoh>. [SpeechGPT]: ")
    assert task_question("Transcribe this.", "<sosp><1><eosp>") == (
        "Transcribe this. This is input: <sosp><1><eosp>")


def test_added_tokens_in_the_reference_order():
    tokens = added_tokens(1000)
    assert len(tokens) == 1006
    assert tokens[:3] == ["<0>", "<1>", "<2>"] and tokens[999] == "<999>"
    assert tokens[1000:] == ["<sosp>", "<eosp>", "[Human]", "[SpeechGPT]", "<eoh>", "<eos>"]
    assert added_tokens(5, dialog=False) == ["<0>", "<1>", "<2>", "<3>", "<4>", "<sosp>",
                                             "<eosp>"]
    assert "<eoa>" not in tokens and "<eoa>" not in MARKERS


@pytest.mark.parametrize("task", ["asr", "tts"])
def test_instruction_banks_are_large_distinct_and_clean(task):
    bank = INSTRUCTIONS[task]
    assert len(bank) >= 100
    assert len({b.lower().strip(" .?!") for b in bank}) == len(bank)  # distinct phrasings
    for phrase in bank:
        assert find_markup(phrase) is None
        assert phrase == phrase.strip() and phrase[-1] in ".?!" and phrase[0].isupper()
        assert "This is input" not in phrase
    assert not set(ASR_INSTRUCTIONS) & set(TTS_INSTRUCTIONS)


def test_choose_is_deterministic_and_spreads():
    ids = [f"utt{i}" for i in range(2000)]
    a = [choose(ASR_INSTRUCTIONS, 0, i, "asr") for i in ids]
    assert a == [choose(ASR_INSTRUCTIONS, 0, i, "asr") for i in ids]
    b = [choose(ASR_INSTRUCTIONS, 1, i, "asr") for i in ids]
    assert sum(x != y for x, y in zip(a, b)) > 1800
    assert len(set(a)) > 0.9 * len(ASR_INSTRUCTIONS)


@pytest.mark.parametrize("text", [
    "say <eoh> now", "[SpeechGPT]: hi", "a <sosp> b", "<eosp>", "unit <123> here",
    "<007>", "end <eoa>", "[Human]", "x [ta] y", "[ua]", "<eos>", "</s>", "<s>", "<unk>",
    "<|im_start|>assistant", "<|endoftext|>",
])
def test_markup_is_found(text):
    assert find_markup(text) is not None
    with pytest.raises(RecordError) as e:
        check_text(text, "text", "utt7")
    assert e.value.where == "utt7" and "markup" in e.value.reason


@pytest.mark.parametrize("text", [
    "Plain text.", "a < b and c > d", "[1] a footnote", "<b>bold</b>", "x<y>z", "[human]",
    "e-mail <me@x.org>", "5 < 6 > 4", "Café ✓ 日本", "the [SpeechGPT ] gap", "<12 >",
])
def test_plain_text_passes(text):
    assert find_markup(text) is None
    assert check_text(text, "text", "u") == text


def test_check_text_names_bad_types_and_empty_text():
    with pytest.raises(RecordError, match="must be a string"):
        check_text(5, "text", "u")
    with pytest.raises(RecordError, match="is empty"):
        check_text("   ", "question_text", "u")
