"""SpeechInstruct construction: records in, SpeechGPT training examples out.

* ``pretrain_text``: a unit record -> a stage-1 line ``<sosp><u>…<eosp>``;
* ``cross_modal_examples``: ``units`` + ``text`` -> an ASR and a TTS instruction (stage 2);
* ``chain_of_modality_examples``: a quadruplet -> the four input/output combinations
  (stage 3);
* ``Quadrupleter``: text question/answer pairs -> quadruplets, speaking both sides with a
  TTS command and encoding the audio into units.

Every text that goes into a prompt passes ``sgpt.lm.prompts.check_text``; every unit list is
checked against k. A bad record raises RecordError naming it.

Quadruplet records (the input of chain-of-modality, the output of quadruplets):
``{"id", "question_text", "question_units", "answer_text", "answer_units"}``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sgpt.core import stream
from sgpt.core.errors import AudioError, RecordError, SgptError
from sgpt.lm.prompts import (
    INSTRUCTIONS,
    MODES,
    TASKS,
    check_text,
    choose,
    units_text,
)
from sgpt.lm.prompts import (
    chain_of_modality as com_example,
)
from sgpt.lm.prompts import (
    cross_modal as cm_example,
)

QUADRUPLET_KEYS = ("question_text", "question_units", "answer_text", "answer_units")
# What each chain-of-modality mode reads from a quadruplet.
MODE_NEEDS = {
    "s2s": QUADRUPLET_KEYS,
    "s2t": ("question_text", "question_units", "answer_text"),
    "t2s": ("question_text", "answer_text", "answer_units"),
    "t2t": ("question_text", "answer_text"),
}
DEFAULT_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-us+f3", "en-gb+m3", "en-029",
                  "en-gb-x-rp+f2", "en-us+m7")
DEFAULT_TTS_CMD = "espeak-ng -v {voice} -w {wav} --stdin"


def check_units(record: dict, key: str, k: int, dedup: bool = True) -> list[int]:
    """``record[key]`` checked (sgpt.core.stream.check_units), runs merged if ``dedup``."""
    units = stream.check_units(record, k, key=key)
    return stream.merge_runs(units) if dedup else list(units)


def record_text(record: dict, key: str) -> str:
    """``record[key]``, checked free of markup, with outer whitespace removed."""
    if key not in record:
        raise RecordError(record["id"], f"no '{key}' key")
    return check_text(record[key], key, record["id"]).strip()


def pretrain_units(record: dict, k: int, dedup: bool = True) -> list[int]:
    """The units of a stage-1 line of a unit record (checked; runs merged if ``dedup``)."""
    return check_units(record, "units", k, dedup)


def pretrain_text(record: dict, k: int, dedup: bool = True) -> str:
    """The stage-1 line of a unit record: ``<sosp><u1>…<eosp>``."""
    return units_text(pretrain_units(record, k, dedup))


def cross_modal_examples(record: dict, k: int, seed: int = 0,
                         tasks: Sequence[str] = TASKS, dedup: bool = True) -> list[dict]:
    """ASR (speech in, text out) and TTS (text in, speech out) examples of a record.

    The instruction of each is chosen from its bank by ``seed``, the record id and the task.
    """
    speech = units_text(check_units(record, "units", k, dedup))
    text = record_text(record, "text")
    out = []
    for task in tasks:
        instruction = choose(INSTRUCTIONS[task], seed, record["id"], task)
        if task == "asr":
            example = cm_example(instruction, speech, text)
        elif task == "tts":
            example = cm_example(instruction, text, speech)
        else:
            raise ValueError(f"unknown task {task!r}")
        out.append({"id": f"{record['id']}:{task}", **example})
    return out


def chain_of_modality_examples(record: dict, k: int, modes: Sequence[str] = MODES,
                               dedup: bool = True) -> list[dict]:
    """Stage-3 examples of a quadruplet, one per mode (s2s, s2t, t2s, t2t)."""
    needed = {key for mode in modes for key in MODE_NEEDS[mode]}
    missing = [key for key in QUADRUPLET_KEYS if key in needed and key not in record]
    if missing:
        raise RecordError(record["id"], "no " + ", ".join(f"'{m}'" for m in missing)
                          + f" key{'s' if len(missing) > 1 else ''} (a quadruplet needs "
                          + ", ".join(QUADRUPLET_KEYS) + ")")
    q_text = record_text(record, "question_text")
    a_text = record_text(record, "answer_text")
    q_units = check_units(record, "question_units", k, dedup) \
        if "question_units" in needed else []
    a_units = check_units(record, "answer_units", k, dedup) if "answer_units" in needed else []
    return [{"id": f"{record['id']}:{mode}",
             **com_example(mode, q_text, a_text, q_units, a_units)} for mode in modes]


# --- quadruplets from text pairs ----------------------------------------------------------

def qa_texts(record: dict) -> tuple[str, str]:
    """The question and answer text of a pair record (``question_text``/``answer_text``,
    or ``question``/``answer``)."""
    out = []
    for side in ("question", "answer"):
        key = f"{side}_text" if f"{side}_text" in record else side
        if key not in record:
            raise RecordError(record["id"], f"no '{side}_text' (or '{side}') key")
        out.append(record_text(record, key))
    return out[0], out[1]


class TTSCommand:
    """Speaks text with an external command.

    ``template`` is split like a shell line, then ``{voice}``, ``{wav}`` (a temporary
    output path) and ``{text}`` are filled into the words: no shell is involved. Without
    ``{text}`` the text goes to the command's stdin; without ``{wav}`` the command writes
    the audio file to its stdout.
    """

    def __init__(self, template: str = DEFAULT_TTS_CMD, timeout: float = 120.0):
        try:
            self.words = shlex.split(template)
        except ValueError as e:
            raise SgptError(f"--tts-cmd: {e}") from None
        if not self.words:
            raise SgptError("--tts-cmd is empty")
        self.template = template
        self.timeout = timeout

    def __call__(self, text: str, voice: str) -> np.ndarray:
        from sgpt.core.audio import load_audio, load_audio_bytes

        with tempfile.TemporaryDirectory(prefix="sgpt-tts-") as tmp:
            wav = os.path.join(tmp, "out.wav")
            fill = {"voice": voice, "wav": wav, "text": text}
            argv = [w.format(**fill) for w in self.words]
            stdin = None if "{text}" in self.template else text.encode("utf-8")
            try:
                done = subprocess.run(argv, input=stdin, capture_output=True,
                                      timeout=self.timeout)
            except FileNotFoundError:
                raise SgptError(f"TTS command not found: {argv[0]}") from None
            except subprocess.TimeoutExpired:
                raise AudioError(f"TTS command timed out after {self.timeout:.0f} s") from None
            if done.returncode != 0:
                detail = done.stderr.decode("utf-8", "replace").strip().splitlines()
                raise AudioError(f"TTS command failed (exit status {done.returncode})"
                                 + (f": {detail[-1]}" if detail else ""))
            if "{wav}" in self.template:
                return load_audio(wav)
            return load_audio_bytes(done.stdout)


class Quadrupleter:
    """Turns text question/answer pairs into quadruplets: TTS, then speech -> units.

    ``encoder`` is an ``sgpt.units.speech_encoder.SpeechEncoder`` (deduplicating); voices are
    picked per record and side from ``voices`` by ``seed``.
    """

    def __init__(self, encoder, tts: TTSCommand, voices: Sequence[str] = DEFAULT_VOICES,
                 seed: int = 0, jobs: int = 1, max_samples: int | None = None):
        if not voices:
            raise SgptError("no voices given")
        self.encoder = encoder
        self.tts = tts
        self.voices = list(voices)
        self.seed = seed
        self.jobs = max(1, jobs)
        self.max_samples = max_samples

    def voice(self, record_id: str, side: str) -> str:
        return choose(self.voices, self.seed, record_id, side)

    def _speak(self, record: dict) -> tuple[dict, list[np.ndarray]] | RecordError:
        try:
            q_text, a_text = qa_texts(record)
            waves = []
            for side, text in (("question", q_text), ("answer", a_text)):
                try:
                    waves.append(self.tts(text, self.voice(record["id"], side)))
                except AudioError as e:
                    raise RecordError(record["id"], f"{side}: {e}") from None
            return {"q": q_text, "a": a_text}, waves
        except RecordError as e:
            return e

    def __call__(self, records: Sequence[dict]) -> list[dict | RecordError]:
        """A quadruplet (or the RecordError) for each pair record, in order."""
        with ThreadPoolExecutor(self.jobs) as pool:
            spoken = list(pool.map(self._speak, records))
        waves = [w for s in spoken if not isinstance(s, RecordError) for w in s[1]]
        encoded = iter(self.encoder(waves, max_samples=self.max_samples) if waves else [])
        out: list[dict | RecordError] = []
        for record, s in zip(records, spoken):
            if isinstance(s, RecordError):
                out.append(s)
                continue
            texts, _ = s
            q, a = next(encoded), next(encoded)
            quad = {key: value for key, value in record.items()
                    if key not in ("question", "answer")}
            quad.update({
                "question_text": texts["q"], "question_units": q["units"],
                "answer_text": texts["a"], "answer_units": a["units"],
                "voices": [self.voice(record["id"], "question"),
                           self.voice(record["id"], "answer")],
                "units_meta": self.encoder.meta,
            })
            out.append(quad)
        return out
