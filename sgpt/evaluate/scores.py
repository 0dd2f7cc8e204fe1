"""Scores of a SpeechGPT model's answers: ASR word error, judged word error of spoken answers,
spoken question answering, and unit-level figures.

Every score reads the answer records of ``sgpt-generate`` (and of ``sgpt-vocode``, which adds
``audio``), matched by ``id`` to their references:

- ``score_asr``: ``task: asr`` answers; the hypothesis is the answer's ``text``. WER per record
  and over the whole set (jiwer over all pairs: errors summed over reference words summed,
  not a mean of per-record rates), after ``sgpt.evaluate.judge.normalize_text`` on both sides.
- ``score_judged``: spoken answers (``audio``) transcribed by an offline ASR judge
  (``sgpt.evaluate.judge``), WER against the reference text; next to it, the same judge's WER on the
  original recordings of the same sentences, and the ratio of the two: a judge that errs on
  the original audio errs on the model's audio too, so only the ratio says how far the model
  is from the recordings it learned from.
- ``score_qa``: a text answer is correct when the normalized reference answer occurs in the
  normalized text answer as whole words ("paris" is in "the capital is paris", not in
  "parisian"; a reference may be a list of accepted answers, any one of which will do); a
  spoken answer is correct when it occurs so in the judge's transcript of the answer's audio.
  Also the WER of the model's own transcript of the spoken question (chain of modality writes
  it first), the questions it transcribed word for word (``heard``) and how many of those it
  answered right in text (hearing and knowing apart), and the judge's WER on the question
  recordings. Text questions are scored alike (``examples/eval``'s general questions).
- ``score_units``: unit edit distance (Levenshtein over deduplicated units, summed over
  pairs, over the summed reference length) between generated units and reference units, and
  throughput. ``sgpt-generate`` writes no timing into its records, so throughput is the
  answer units (one LLM token each) per second of the generation's wall time measured around
  it (``seconds``, as ``examples/eval/Makefile`` does): it leaves out the few marker and text
  tokens of each answer and includes loading the model.

References: with a references file (the test set), every id in it is scored, and an id with no
answer (the generation or vocoding failed) counts as an empty answer (every reference word
deleted, the question wrong) and is listed under ``missing``, so failures never improve a
score. Without one, each answer carries its own: ``reference`` (or ``--ref-key``), else the
prompt's key (``prompt.text`` for asr and tts prompts, ``answer`` for spoken questions, which
``sgpt-generate`` passes through).

A record that cannot be scored (no reference, a reference that normalizes to nothing, a
duplicate id, an unreadable wav, the wrong task) is an error naming it; the others are scored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sgpt.core import stream
from sgpt.core.errors import AudioError, RecordError, SgptError, first_line
from sgpt.evaluate.judge import (
    JudgeError,
    edit_distance,
    group_names,
    lookup,
    make_judge,
    normalize_text,
    word_error_rate,
)

NORMALIZATION = ("sgpt.evaluate.judge.normalize_text: NFKC, lowercase, numbers 0-999,999 "
                 "spelled out, '%' as 'percent', punctuation except in-word apostrophes "
                 "removed")
QA_FIGURE = "spoken QA: text answer correct"
TIMING_NOTE = ("sgpt-generate writes no timing: seconds is the wall time measured around the "
               "generation (model loading included); units/s counts answer units, one LLM "
               "token each, not the few marker and text tokens around them")


@dataclass
class Scores:
    """What a score returns: the summary, one record per scored item, and the bad records."""

    summary: dict
    records: list[dict] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Records and their references


def unique_records(items: Iterable[dict | RecordError], errors: list[RecordError]
                   ) -> list[dict]:
    """The records of ``items`` (from ``read_records``), bad lines and repeated ids to errors."""
    seen: set[str] = set()
    out = []
    for item in items:
        if isinstance(item, RecordError):
            errors.append(item)
        elif item["id"] in seen:
            errors.append(RecordError(item["id"], "duplicate id: scored once already"))
        else:
            seen.add(item["id"])
            out.append(item)
    return out


@dataclass
class Item:
    """One thing to score: its id, reference, and answer record (None: no answer came)."""

    id: str
    reference: str | list[str]  # a list: accepted alternatives (QA)
    answer: dict | None
    source: dict  # the record the reference came from (the answer, or the test set's)


def _check_reference(rid: str, value, key: str, alternatives: bool = False):
    """``value`` if it is a reference text (with ``alternatives``, also a list of them: any
    one is right); RecordError naming ``rid`` if not."""
    texts = value if alternatives and isinstance(value, list) and value else [value]
    if not all(isinstance(v, str) for v in texts):
        raise RecordError(rid, f"no reference text (looked for {key})")
    for v in texts:
        if not normalize_text(v):
            raise RecordError(rid, f"reference {v!r} is empty after normalization")
    return value


def pair_references(answers: list[dict], references: list[dict] | None,
                    answer_keys: Sequence[str], reference_key: str,
                    errors: list[RecordError], alternatives: bool = False) -> list[Item]:
    """Pair answers with references (see the module docstring); errors for bad ones.
    ``alternatives``: a reference may be a list of accepted texts (QA keys)."""
    items = []
    if references is None:
        for a in answers:
            value = next((v for v in (lookup(a, k) for k in answer_keys) if v is not None),
                         None)
            try:
                ref = _check_reference(a["id"], value, " or ".join(map(repr, answer_keys)),
                                       alternatives)
            except RecordError as e:
                errors.append(e)
                continue
            items.append(Item(a["id"], ref, a, a))
        return items
    by_id = {a["id"]: a for a in answers}
    for r in references:
        try:
            ref = _check_reference(r["id"], lookup(r, reference_key),
                                   f"{reference_key!r} in the references", alternatives)
        except RecordError as e:
            errors.append(e)
            by_id.pop(r["id"], None)
            continue
        items.append(Item(r["id"], ref, by_id.pop(r["id"], None), r))
    for rid in by_id:
        errors.append(RecordError(rid, "not in the references: no reference to score it by"))
    return items


def _text(item: Item, key: str, errors: list[RecordError]) -> str | None:
    """The answer's text under ``key`` ('' when absent: the model gave none); None if bad."""
    if item.answer is None:
        return ""
    value = item.answer.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.append(RecordError(item.id, f"'{key}' must be a string"))
        return None
    return value


def _record_wer(reference: str, hypothesis: str) -> dict:
    s = word_error_rate([reference], [hypothesis])
    return {"wer": s["wer"], "errors": s["substitutions"] + s["deletions"] + s["insertions"],
            "words": s["words"]}


def _wer_summary(refs: list[str], hyps: list[str]) -> dict:
    out = word_error_rate(refs, hyps)
    out["utterances"] = len(refs)
    return out


def _groups(rows: list[dict], group_by: str | Sequence[str], sources: list[dict]) -> dict:
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for row, src in zip(rows, sources):
        for name in group_names(src, group_by):
            refs, hyps = groups.setdefault(name, ([], []))
            refs.append(row["reference"])
            hyps.append(row["hypothesis"])
    return {g: _wer_summary(r, h) for g, (r, h) in sorted(groups.items())}


def _group_source(item: Item) -> dict:
    """Where a group key is looked up: the reference record, then the answer."""
    if item.answer is None or item.source is item.answer:
        return item.source
    return {**item.answer, **item.source}


# ---------------------------------------------------------------------------------------------
# Test sets


TEST_SETS = {"sentences": ("text",), "qa": ("question", "answer")}


def prepare_test_set(records: list[dict], kind: str, audio_root: str | None = None,
                     errors: list[RecordError] | None = None) -> list[dict]:
    """Check a test set's records and make them ready for the tools.

    ``sentences``: ``{"id", "audio", "text", ...}``; ``qa``: ``{"id", "audio", "question",
    "answer", ...}``. A relative ``audio`` is taken relative to ``audio_root`` (default: the
    working directory) and made absolute, so the records work from any directory. For ``qa``,
    ``text`` is dropped: the spoken question is its units alone (a record with both is an
    instruction about the speech for sgpt-generate), its text stays in ``question``.
    """
    from sgpt.core.audio import check_audio_file

    errors = errors if errors is not None else []
    keys = TEST_SETS[kind]
    out = []
    for r in records:
        audio = r.get("audio")
        if not isinstance(audio, str) or not audio:
            errors.append(RecordError(r["id"], "no 'audio'"))
            continue
        if audio_root is not None and not os.path.isabs(audio):
            audio = os.path.join(audio_root, audio)
        audio = os.path.abspath(audio)
        try:
            check_audio_file(audio)
        except AudioError as e:
            errors.append(RecordError(r["id"], f"{audio}: {e}"))
            continue
        try:
            for k in keys:
                _check_reference(r["id"], r.get(k), repr(k), alternatives=k == "answer")
        except RecordError:
            errors.append(RecordError(r["id"], f"needs a non-empty '{k}'"))
            continue
        rec = {**r, "audio": audio}
        if kind == "qa":
            rec.pop("text", None)
        out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------
# ASR


def score_asr(answers: list[dict], references: list[dict] | None = None,
              ref_key: str | None = None, group_by: str | Sequence[str] | None = None) -> Scores:
    """WER of ``task: asr`` answers (their ``text``) against the references."""
    errors: list[RecordError] = []
    asr = []
    for a in answers:
        task = a.get("task", "asr")
        if task != "asr":
            errors.append(RecordError(a["id"], f"an answer of task {task!r}, not asr"))
        else:
            asr.append(a)
    keys = [ref_key] if ref_key else ["reference", "prompt.text"]
    items = pair_references(asr, references, keys, ref_key or "text", errors)
    rows, sources = [], []
    for item in items:
        hyp = _text(item, "text", errors)
        if hyp is None:
            continue
        row = {"id": item.id, "reference": item.reference, "hypothesis": hyp}
        row.update(_record_wer(item.reference, hyp))
        if item.answer is None:
            row["missing"] = True
        rows.append(row)
        sources.append(_group_source(item))
    summary: dict = {"task": "asr"}
    if rows:
        summary.update(_wer_summary([r["reference"] for r in rows],
                                    [r["hypothesis"] for r in rows]))
        if group_by:
            summary["groups"] = _groups(rows, group_by, sources)
    summary.update(missing=[r["id"] for r in rows if r.get("missing")],
                   empty=sum(1 for r in rows if not r["hypothesis"] and not r.get("missing")),
                   normalization=NORMALIZATION)
    return Scores(summary, rows, errors)


# ---------------------------------------------------------------------------------------------
# The judge


def open_judge(kind: str = "auto", command: str | None = None, batch_size: int = 8,
               warn: Callable[[str], None] | None = None):
    """A judge of ``sgpt.evaluate.judge``: ``auto`` is Whisper base when faster-whisper and the
    packaged weights are installed, else pocketsphinx (with a warning: it is a far weaker
    judge)."""
    if command is not None and kind in ("auto", "whisper"):
        kind = "cmd"
    if kind == "auto":
        try:
            return make_judge("whisper", batch_size=batch_size)
        except SgptError as e:
            if warn is not None:
                warn(f"the Whisper judge is unavailable ({first_line(e)}): judging with "
                     "pocketsphinx, which errs on far more words of synthetic speech")
            return make_judge("pocketsphinx")
    kwargs = {"batch_size": batch_size} if kind == "whisper" else {}
    return make_judge(kind, command, **kwargs)


def transcribe_each(judge, wavs: Sequence[str]) -> tuple[list[str | None], dict[int, str]]:
    """Transcripts of ``wavs`` (None where a file failed) and the reason of each failure.

    All in one call (the judge batches); if that fails, one file at a time to find the bad
    ones, so one unreadable file costs only itself.
    """
    if not wavs:
        return [], {}
    try:
        return list(judge.transcribe(list(wavs))), {}
    except JudgeError:
        pass
    out: list[str | None] = []
    failed: dict[int, str] = {}
    for i, wav in enumerate(wavs):
        try:
            (text,) = judge.transcribe([wav])
            out.append(text)
        except JudgeError as e:
            out.append(None)
            reason = first_line(e)
            failed[i] = reason[len(wav) + 2:] if reason.startswith(f"{wav}: ") else reason
    return out, failed


def _audio(record: dict | None, key: str = "audio") -> str | None:
    value = record.get(key) if record is not None else None
    return value if isinstance(value, str) and value else None


def judge_original(original: list[dict], ids: Iterable[str], judge, text_key: str,
                   errors: list[RecordError], group_by: str | Sequence[str] | None = None
                   ) -> dict | None:
    """The judge's WER on the original recordings (``audio`` + ``text_key``) of ``ids``
    (with ``group_by``: also per value of that key of the original records)."""
    wanted = set(ids)
    recs = []
    for r in original:
        if r["id"] not in wanted:
            continue
        audio = _audio(r)
        text = r.get(text_key)
        if audio is None or not isinstance(text, str) or not normalize_text(text):
            errors.append(RecordError(r["id"], f"original record needs 'audio' and a "
                                               f"non-empty '{text_key}'"))
            continue
        recs.append(r)
    if not recs:
        return None
    hyps, failed = transcribe_each(judge, [r["audio"] for r in recs])
    rows, sources = [], []
    for i, (r, h) in enumerate(zip(recs, hyps)):
        if h is None:
            errors.append(RecordError(r["id"], f"original audio: {failed[i]}"))
            continue
        rows.append({"reference": r[text_key], "hypothesis": h})
        sources.append(r)
    if not rows:
        return None
    out = _wer_summary([r["reference"] for r in rows], [r["hypothesis"] for r in rows])
    if group_by:
        out["groups"] = _groups(rows, group_by, sources)
    out["missing"] = sorted(wanted - {r["id"] for r in recs})
    return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


# ---------------------------------------------------------------------------------------------
# Judged spoken answers (TTS)


def score_judged(answers: list[dict], judge, references: list[dict] | None = None,
                 ref_key: str | None = None, original: list[dict] | None = None,
                 original_key: str = "text", group_by: str | Sequence[str] | None = None) -> Scores:
    """The judge's WER on the answers' ``audio``, next to its WER on the original audio."""
    errors: list[RecordError] = []
    keys = [ref_key] if ref_key else ["reference", "prompt.text"]
    items = pair_references(answers, references, keys, ref_key or "text", errors)
    todo = []
    for item in items:
        audio = _audio(item.answer)
        if audio is None and item.answer is not None:
            errors.append(RecordError(item.id, "no 'audio' to judge (vocode the answers "
                                               "with sgpt-vocode -o DIR first)"))
            continue
        todo.append((item, audio))
    wavs = [a for _, a in todo if a is not None]
    texts, failed = transcribe_each(judge, wavs)
    by_wav = iter(zip(texts, range(len(wavs))))
    rows, sources = [], []
    for item, audio in todo:
        if audio is None:
            hyp = ""
        else:
            hyp, i = next(by_wav)
            if hyp is None:
                errors.append(RecordError(item.id, failed[i]))
                continue
        row = {"id": item.id, "reference": item.reference, "hypothesis": hyp, "audio": audio}
        row.update(_record_wer(item.reference, hyp))
        if item.answer is None:
            row["missing"] = True
        rows.append(row)
        sources.append(_group_source(item))
    summary: dict = {"task": "judged", "judge": judge.name}
    if rows:
        summary.update(_wer_summary([r["reference"] for r in rows],
                                    [r["hypothesis"] for r in rows]))
        if group_by:
            summary["groups"] = _groups(rows, group_by, sources)
        if original is not None:
            orig = judge_original(original, [r["id"] for r in rows], judge, original_key,
                                  errors, group_by)
            if orig is not None:
                summary["original"] = orig
                summary["ratio_to_original"] = _ratio(summary["wer"], orig["wer"])
    summary.update(missing=[r["id"] for r in rows if r.get("missing")],
                   normalization=NORMALIZATION)
    return Scores(summary, rows, errors)


# ---------------------------------------------------------------------------------------------
# Spoken question answering


def answer_matches(reference: str | Sequence[str], answer: str) -> bool:
    """Whether the normalized ``reference`` occurs as whole words in the normalized ``answer``;
    a list of references holds accepted alternatives (``["Bern", "Berne"]``): any one will do."""
    text = f" {normalize_text(answer)} "
    refs = [reference] if isinstance(reference, str) else reference
    return any((ref := normalize_text(r)) and f" {ref} " in text for r in refs)


def _qa_row(item: Item, question_key: str, errors: list[RecordError]) -> dict | None:
    """The scored row of one QA answer (its text answer; the question and the model's
    transcript of it, when the question's text is known); None if it has no text."""
    text = _text(item, "text", errors)
    if text is None:
        return None
    row = {"id": item.id, "reference": item.reference, "text": text,
           "text_correct": answer_matches(item.reference, text)}
    question = item.source.get(question_key) if item.source else None
    if question is None and item.answer is not None:
        question = lookup(item.answer, question_key)
    transcript = item.answer.get("transcript") if item.answer is not None else None
    if isinstance(question, str) and normalize_text(question):
        row["question"] = question
        row["transcript"] = transcript if isinstance(transcript, str) else ""
    if item.answer is None:
        row["missing"] = True
    return row


def _judge_spoken_answers(rows: list[dict], audio_of: dict[str, str | None], judge,
                          errors: list[RecordError]) -> list[dict]:
    """The rows with the judge's transcript of each spoken answer and whether it is right;
    an answer without audio is wrong, one the judge cannot read is an error and left out."""
    wavs = [(r, audio_of.get(r["id"])) for r in rows]
    paths = [a for _, a in wavs if a is not None]
    texts, failed = transcribe_each(judge, paths)
    it = iter(zip(texts, range(len(paths))))
    kept = []
    for r, audio in wavs:
        if audio is None:
            r.update(audio=None, judge_text="", speech_correct=False)
        else:
            hyp, i = next(it)
            if hyp is None:
                errors.append(RecordError(r["id"], failed[i]))
                continue
            r.update(audio=audio, judge_text=hyp,
                     speech_correct=answer_matches(r["reference"], hyp))
        kept.append(r)
    return kept


def score_qa(answers: list[dict], judge=None, speech: list[dict] | None = None,
             references: list[dict] | None = None, ref_key: str | None = None,
             question_key: str = "question", original: list[dict] | None = None,
             figure: str | None = None) -> Scores:
    """Share of correct text answers and (with a judge) spoken answers.

    ``speech``: the answers after ``sgpt-vocode`` (records with ``audio``), matched by id;
    without it an answer's own ``audio`` is judged. An answer without audio is wrong spoken.
    ``original``: the question records (``audio`` + ``question_key``), for the judge's WER
    on the question recordings. ``figure``: the report's name for the share of correct text
    answers (default: spoken QA's), e.g. of text questions whose key answer a tuned model kept.
    """
    errors: list[RecordError] = []
    keys = [ref_key] if ref_key else ["reference", "answer", "prompt.answer"]
    items = pair_references(answers, references, keys, ref_key or "answer", errors,
                            alternatives=True)
    audio_of: dict[str, str | None] = {}
    for item in items:
        audio_of[item.id] = _audio(item.answer)
    if speech is not None:
        by_id = {r["id"]: r for r in speech}
        for rid in audio_of:
            audio_of[rid] = _audio(by_id.get(rid))
    rows = [row for item in items
            if (row := _qa_row(item, question_key, errors)) is not None]
    summary: dict = {"task": "qa", "questions": len(rows)}
    if figure:
        summary["figure"] = figure
    if rows:
        right = sum(r["text_correct"] for r in rows)
        summary.update(text_correct=right / len(rows), text_correct_count=right)
    if judge is not None and rows:
        rows = _judge_spoken_answers(rows, audio_of, judge, errors)
        right = sum(r["speech_correct"] for r in rows)
        summary.update(judge=judge.name, questions=len(rows),
                       text_correct_count=sum(r["text_correct"] for r in rows),
                       speech_correct=right / len(rows) if rows else None,
                       speech_correct_count=right,
                       no_speech=[r["id"] for r in rows if r["audio"] is None])
        summary["text_correct"] = (summary["text_correct_count"] / len(rows)) if rows else None
    asked = [r for r in rows if "question" in r]
    if asked:
        summary["transcript_wer"] = _wer_summary([r["question"] for r in asked],
                                                 [r["transcript"] for r in asked])
        for r in asked:
            r["heard"] = normalize_text(r["transcript"]) == normalize_text(r["question"])
        heard = [r for r in asked if r["heard"]]
        summary["heard"] = {"questions": len(asked), "count": len(heard),
                            "text_correct_count": sum(r["text_correct"] for r in heard)}
    if judge is not None and original is not None and rows:
        orig = judge_original(original, [r["id"] for r in rows], judge, question_key, errors)
        if orig is not None:
            summary["original_questions"] = orig
    summary.update(missing=[r["id"] for r in rows if r.get("missing")],
                   normalization=NORMALIZATION)
    return Scores(summary, rows, errors)


# ---------------------------------------------------------------------------------------------
# Unit-level figures


def _units(record: dict) -> list[int] | None:
    units = record.get("units")
    if not isinstance(units, list) or not units:
        return None
    return stream.heard_units(record)


def score_units(answers: list[dict], reference_units: list[dict] | None = None,
                seconds: float | None = None) -> Scores:
    """Generated units: how many, per second of ``seconds`` (the generation's wall time),
    and their edit distance to the reference units of the same ids (deduplicated both)."""
    errors: list[RecordError] = []
    refs = {r["id"]: r for r in reference_units} if reference_units is not None else None
    rows = []
    total = 0
    for a in answers:
        units = _units(a)
        row: dict = {"id": a["id"], "units": len(units) if units else 0}
        total += row["units"]
        if refs is not None:
            ref = refs.get(a["id"])
            ref_units = _units(ref) if ref is not None else None
            if ref_units is None:
                errors.append(RecordError(a["id"], "no reference units (no record of this id "
                                                   "with 'units' in the reference units)"))
            else:
                row["reference_units"] = len(ref_units)
                row["distance"] = edit_distance(ref_units, units or [])
        rows.append(row)
    summary: dict = {"task": "units", "answers": len(rows), "answers_with_units":
                     sum(1 for r in rows if r["units"]), "units": total}
    if rows:
        summary["units_per_answer"] = total / len(rows)
    pairs = [r for r in rows if "distance" in r]
    if pairs:
        distance = sum(r["distance"] for r in pairs)
        length = sum(r["reference_units"] for r in pairs)
        summary["unit_edit"] = {"uer": distance / length, "distance": distance,
                                "reference_units": length, "pairs": len(pairs)}
    if seconds is not None:
        summary.update(seconds=seconds, units_per_second=total / seconds if seconds > 0
                       else None, answers_per_second=len(rows) / seconds if seconds > 0
                       else None, timing=TIMING_NOTE)
    return Scores(summary, rows, errors)


# ---------------------------------------------------------------------------------------------
# The report: one table of every summary


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _group_rows(figure: str, s: dict, name: str) -> list[tuple[str, str, str, str]]:
    """A WER summary's groups (--group-by), a row each, beside the original's where known."""
    original = (s.get("original") or {}).get("groups", {})
    rows = []
    for group, g in s.get("groups", {}).items():
        beside = f"{g['utterances']} utterances"
        if group in original:
            beside += f"; judge on the original audio: {_pct(original[group]['wer'])}"
        rows.append((f"{figure}: {group}", _pct(g["wer"]), beside, name))
    return rows


def report_rows(summaries: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(figure, value, next to it, source) for each summary (keyed by its file)."""
    rows = []
    for source, s in summaries.items():
        name = os.path.basename(source)
        task = s.get("task")
        if task == "asr" and "wer" in s:
            rows.append(("ASR word error rate", _pct(s["wer"]),
                         f"{s['utterances']} utterances, {s['words']} words", name))
            rows += _group_rows("ASR word error rate", s, name)
        elif task == "judged" and "wer" in s:
            orig = s.get("original")
            beside = (f"judge on the original audio: {_pct(orig['wer'])}; ratio "
                      f"{s['ratio_to_original']:.2f}" if orig and s.get("ratio_to_original")
                      is not None else
                      f"judge on the original audio: {_pct(orig['wer'])}" if orig else
                      "no original audio given")
            rows.append((f"judged word error rate ({s['judge']})", _pct(s["wer"]), beside,
                         name))
            rows += _group_rows("judged word error rate", s, name)
        elif task == "qa":
            rows.append((s.get("figure") or QA_FIGURE, _pct(s.get("text_correct")),
                         f"{s.get('text_correct_count', 0)} of {s['questions']}", name))
            if "speech_correct" in s:
                orig = s.get("original_questions")
                beside = f"{s['speech_correct_count']} of {s['questions']} ({s['judge']})"
                if orig:
                    beside += f"; judge WER on the question audio: {_pct(orig['wer'])}"
                rows.append(("spoken QA: spoken answer correct", _pct(s["speech_correct"]),
                             beside, name))
            if "transcript_wer" in s:
                rows.append(("spoken QA: WER of the model's transcript of the question",
                             _pct(s["transcript_wer"]["wer"]), "", name))
            if s.get("heard"):
                h = s["heard"]
                rows.append(("spoken QA: question heard word for word",
                             _pct(h["count"] / h["questions"]),
                             f"{h['count']} of {h['questions']}; text answer correct for "
                             f"{h['text_correct_count']} of them", name))
        elif task == "units":
            if "unit_edit" in s:
                u = s["unit_edit"]
                rows.append(("unit edit distance / reference units", _pct(u["uer"]),
                             f"{u['pairs']} pairs, {u['reference_units']} reference units",
                             name))
            if s.get("units_per_second") is not None:
                rows.append(("answer units per second (wall time)",
                             f"{s['units_per_second']:.1f}",
                             f"{s['units']} units in {s['seconds']:.1f} s", name))
    return rows


def render_report(summaries: dict[str, dict]) -> str:
    """A Markdown table of ``report_rows``."""
    lines = ["| figure | value | next to it | from |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in report_rows(summaries)]
    return "\n".join(lines) + "\n"
