"""What a SpeechGPT model says, taken apart: transcript, text answer, spoken answer.

The chain-of-modality answer to a spoken question reads
``{transcript}; [ta] {text answer}; [ua] <sosp><u1><u2>…<eosp><eoa>.``, to a text question
``[ta] {text answer}; [ua] <sosp>…<eosp><eoa>.``; an ASR answer is the transcript, a TTS
answer ``<sosp>…<eosp>``, a unit continuation the rest of ``<sosp><u>…`` up to ``<eosp>``.

Decoding puts spaces between added tokens (``<sosp> <661> <12>``) and models stray from the
format, so nothing here compares strings for equality: units are found with a pattern, a
missing ``[ua]`` falls back to the first ``<sosp>``, an unterminated ``<sosp>`` keeps the
units it has, and unit ids outside 0..k-1 (which the base tokenizer can spell as plain text)
are left out of ``units`` and reported in ``notes``, never clipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sgpt.lm.prompts import EOA, EOSP, SOSP, TA, UA

_UNIT = re.compile(r"<\s*(\d+)\s*>")
_SEPARATORS = " \t\r\n;"


@dataclass
class Answer:
    """A parsed answer. ``notes`` say what was missing or dropped (for warnings)."""

    transcript: str | None = None
    text: str | None = None
    units: list[int] | None = None
    notes: list[str] = field(default_factory=list)

    def fields(self) -> dict:
        """The record keys this answer sets (only those it has)."""
        out: dict = {}
        if self.transcript is not None:
            out["transcript"] = self.transcript
        if self.text is not None:
            out["text"] = self.text
        if self.units is not None:
            out["units"] = self.units
        return out


def _clean(text: str) -> str | None:
    text = text.strip(_SEPARATORS)
    return text or None


def until_end(raw: str) -> str:
    """``raw`` up to its ``<eoa>`` (all of it if there is none)."""
    return raw.split(EOA, 1)[0]


def parse_units(speech: str, k: int, answer: Answer) -> list[int]:
    """Unit ids of ``<sosp><u>…<eosp>`` (spaces anywhere; ``<sosp>``/``<eosp>`` optional).

    Ids >= k are dropped and counted in ``answer.notes``.
    """
    start = speech.find(SOSP)
    if start >= 0:
        speech = speech[start + len(SOSP):]
    end = speech.find(EOSP)
    if end >= 0:
        speech = speech[:end]
    elif start >= 0:
        answer.notes.append("unterminated <sosp> (no <eosp>): kept the units before the end")
    units = [int(u) for u in _UNIT.findall(speech)]
    bad = [u for u in units if u >= k]
    if bad:
        answer.notes.append(f"{len(bad)} unit id(s) outside 0..{k - 1} left out "
                            f"(first: {bad[0]})")
        units = [u for u in units if u < k]
    return units


def _split_speech(text: str) -> tuple[str, str | None]:
    """(text before the spoken answer, the spoken answer or None)."""
    if UA in text:
        before, speech = text.split(UA, 1)
        return before, speech
    at = text.find(SOSP)
    if at >= 0:
        return text[:at], text[at:]
    m = _UNIT.search(text)  # units without <sosp>: the spoken answer starts there
    if m is not None and m.start() > 0 and text[m.start() - 1] in _SEPARATORS:
        return text[:m.start()], text[m.start():]
    return text, None


def parse_chat(raw: str, k: int, spoken_question: bool) -> Answer:
    """A chain-of-modality answer: transcript (spoken questions), text answer, units."""
    answer = Answer()
    body = until_end(raw)
    if TA in body:
        transcript, rest = body.split(TA, 1)
        if spoken_question:
            answer.transcript = _clean(transcript)
        elif _clean(transcript):
            answer.notes.append("text before [ta] in the answer to a text question ignored")
    else:
        rest = body
        if spoken_question:
            answer.notes.append("no [ta] in the answer: no transcript")
    text, speech = _split_speech(rest)
    answer.text = _clean(text)
    if speech is not None:
        answer.units = parse_units(speech, k, answer)
    if answer.text is None:
        answer.notes.append("no text answer")
    if not answer.units:
        answer.units = None
        answer.notes.append("no spoken answer (no units)")
    return answer


def parse_asr(raw: str, k: int) -> Answer:
    """An ASR answer: the transcript, which is also the record's text."""
    body = until_end(raw)
    if TA in body:  # a chain-of-modality model may still tag its answer
        body = body.split(TA, 1)[1]
    text, _ = _split_speech(body)
    answer = Answer()
    answer.transcript = answer.text = _clean(text)
    if answer.text is None:
        answer.notes.append("no transcript in the answer")
    return answer


def parse_speech(raw: str, k: int, continuation: bool = False) -> Answer:
    """A TTS answer ``<sosp>…<eosp>``, or a unit continuation (the prompt's <sosp> is open)."""
    answer = Answer()
    body = until_end(raw)
    if continuation:
        end = body.find(EOSP)
        body = body[:end] if end >= 0 else body
    answer.units = parse_units(body, k, answer) or None
    if answer.units is None:
        answer.notes.append("no units in the answer")
    return answer


def parse_answer(raw: str, task: str, k: int, spoken_question: bool = False) -> Answer:
    """Parse the generated text of a ``task`` (chat, asr, tts, continue)."""
    if task == "chat":
        return parse_chat(raw, k, spoken_question)
    if task == "asr":
        return parse_asr(raw, k)
    if task == "tts":
        return parse_speech(raw, k)
    if task == "continue":
        return parse_speech(raw, k, continuation=True)
    raise ValueError(f"unknown task {task!r}")
