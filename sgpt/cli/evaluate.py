"""sgpt-evaluate: scores of a SpeechGPT model's answers, and the offline ASR judge.

A thin layer over sgpt.evaluate (scores, judge): prepare, asr, judged, qa, units, report,
judge. The scores need the ``eval`` extra (jiwer; faster-whisper and Whisper base's weights
for the judge): without it a subcommand that needs them says so in one line.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence

import click

from sgpt import __version__
from sgpt.cli.common import Reporter, check_output, console_main, run_tool
from sgpt.core.errors import RecordError, first_line
from sgpt.core.files import write_atomic, write_json
from sgpt.core.records import read_records
from sgpt.evaluate.judge import judge_records, make_judge
from sgpt.evaluate.scores import (
    TEST_SETS,
    Scores,
    open_judge,
    prepare_test_set,
    render_report,
    score_asr,
    score_judged,
    score_qa,
    score_units,
    transcribe_each,
    unique_records,
)

TOOL = "sgpt-evaluate"


GROUP_HELP = ("Also score each value of this record key apart (e.g. voice); KEY,KEY: each "
              "combination of values (e.g. set,voice); repeatable.")


def _read(sources: Sequence[str], errors: list[RecordError]) -> list[dict]:
    return unique_records(read_records(sources), errors)


def _emit(scores: Scores, summary_file: str | None, per_record: str | None, reporter) -> int:
    for warning in scores.warnings:
        reporter.warn(warning)
    for e in scores.errors:
        reporter.error(e.where, e.reason)
    if not scores.records:
        reporter.error("input", "no record could be scored")
        return 1
    scores.summary["command"] = "sgpt-evaluate " + shlex.join(sys.argv[1:])
    if per_record is not None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in scores.records)
        if per_record == "-":
            sys.stdout.write(lines)
            sys.stdout.flush()
        else:
            write_atomic(per_record, lambda f: f.write(lines.encode("utf-8")))
    if summary_file is not None:
        write_json(summary_file, scores.summary)
    else:
        print(json.dumps(scores.summary, indent=2, ensure_ascii=False), flush=True)
    return reporter.exit_code


def scoring_options(fn):
    fn = click.option("--per-record", metavar="FILE|-",
                      help="Also write one JSONL record per scored item here.")(fn)
    fn = click.option("--summary", "summary_file", metavar="FILE.json",
                      help="Write the JSON summary here instead of stdout.")(fn)
    fn = click.option("--ref-key", metavar="KEY",
                      help="Key of the reference (dotted for nested: prompt.text); "
                           "default: see the command's help.")(fn)
    fn = click.option("--references", metavar="RECORDS",
                      help="The test set (JSONL, by id): every id in it is scored, an id "
                           "without an answer as an empty answer.")(fn)
    return click.argument("inputs", nargs=-1, required=True, metavar="ANSWERS|-...")(fn)


def judge_options(fn):
    fn = click.option("--batch-size", type=click.IntRange(min=1), default=8,
                      show_default=True, help="Files per Whisper batch.")(fn)
    fn = click.option("--judge-cmd", metavar="'ASR {wav}'",
                      help="Shell command that prints the transcript of {wav} (implies "
                           "--judge cmd).")(fn)
    return click.option("--judge", type=click.Choice(["auto", "whisper", "cmd",
                                                      "pocketsphinx"]),
                        default="auto", show_default=True,
                        help="ASR judge: auto is Whisper base (faster-whisper, packaged "
                             "weights), else pocketsphinx with a warning.")(fn)


def check_outputs(per_record, summary_file, inputs=()):
    if per_record == "-" and summary_file is None:
        raise click.UsageError("--per-record - needs --summary FILE (stdout cannot hold "
                               "both)")
    for output, option in ((per_record, "--per-record"), (summary_file, "--summary")):
        if output is not None:
            check_output(output, inputs, option)


def judge_of(kind, command, batch_size, reporter):
    if kind == "cmd" and not command:
        raise click.UsageError("--judge cmd needs --judge-cmd 'ASR {wav}'")
    return open_judge(kind, command, batch_size, reporter.warn)


def _score(inputs, summary_file, per_record, score) -> int:
    """Read the answers, score them (``score(answers, load, reporter)``, where ``load(PATH)``
    reads a side file of records, or None), report: what every scorer does."""
    check_outputs(per_record, summary_file, inputs)
    reporter = Reporter(TOOL)
    errors: list[RecordError] = []
    answers = _read(inputs, errors)
    scores = score(answers, lambda path: None if path is None else _read([path], errors),
                   reporter)
    scores.errors[:0] = errors
    return _emit(scores, summary_file, per_record, reporter)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=TOOL)
def cli():
    """Score a SpeechGPT model's answers: asr, judged (spoken answers), qa, units; report
    puts the summaries in one table; prepare checks a test set; judge transcribes any
    records' audio with the offline ASR judge. Text is normalized as sgpt.evaluate.judge
    documents.

    \b
    Example (examples/eval/Makefile runs the whole evaluation):
      sgpt-units --encoder mfcc --kmeans km.npy -o sent.units.jsonl - < sentences.jsonl
      sgpt-generate --task asr -o asr.jsonl sent.units.jsonl
      sgpt-evaluate asr --summary asr.json asr.jsonl
    """


@cli.command()
@click.argument("kind", type=click.Choice(sorted(TEST_SETS)))
@click.argument("inputs", nargs=-1, required=True, metavar="RECORDS|-...")
@click.option("--audio-root", metavar="DIR",
              help="Directory that relative 'audio' paths are relative to (default: the "
                   "working directory); they are written absolute.")
@run_tool(TOOL)
def prepare(kind, inputs, audio_root):
    """Check a test set (sentences: id, audio, text; qa: id, audio, question, answer; each
    audio file's header read) and write it ready for the tools: absolute audio paths; qa
    records lose 'text' (the question is spoken: its units alone)."""
    reporter = Reporter(TOOL)
    errors: list[RecordError] = []
    records = prepare_test_set(_read(inputs, errors), kind, audio_root, errors)
    for e in errors:
        reporter.error(e.where, e.reason)
    for r in records:
        click.echo(json.dumps(r, ensure_ascii=False))
    if not records:
        reporter.error("input", "no usable test record")
    return reporter.exit_code


@cli.command()
@scoring_options
@click.option("--group-by", metavar="KEY[,KEY]", multiple=True, help=GROUP_HELP)
@run_tool(TOOL)
def asr(inputs, references, ref_key, summary_file, per_record, group_by):
    """WER of task-asr answers ('text') against references.

    The reference: --references RECORDS ('text', or --ref-key), else the answer's
    'reference' (or --ref-key), else its prompt's 'text'.
    """
    return _score(inputs, summary_file, per_record, lambda answers, load, reporter: score_asr(
        answers, load(references), ref_key, group_by))


@cli.command()
@scoring_options
@judge_options
@click.option("--original", metavar="RECORDS",
              help="The original recordings of the same sentences ('audio' + 'text'), "
                   "judged alike: the judge's own WER, reported beside.")
@click.option("--group-by", metavar="KEY[,KEY]", multiple=True, help=GROUP_HELP)
@run_tool(TOOL)
def judged(inputs, references, ref_key, summary_file, per_record, judge, judge_cmd,
           batch_size, original, group_by):
    """WER of spoken answers ('audio', as sgpt-vocode -o DIR writes) transcribed by an ASR
    judge, next to the judge's WER on the original audio of the same sentences.

    The reference: as for asr (a tts prompt's 'text').
    """
    def score(answers, load, reporter):
        refs, orig = load(references), load(original)
        return score_judged(answers, judge_of(judge, judge_cmd, batch_size, reporter), refs,
                            ref_key, orig, group_by=group_by)

    return _score(inputs, summary_file, per_record, score)


@cli.command()
@scoring_options
@judge_options
@click.option("--speech", metavar="RECORDS",
              help="The answers after sgpt-vocode -o DIR ('audio', by id): spoken answers "
                   "are judged (default: the answers' own 'audio', if any).")
@click.option("--no-speech", is_flag=True, help="Score the text answers only (no judge).")
@click.option("--original", metavar="RECORDS",
              help="The spoken questions ('audio' + 'question'): the judge's WER on them, "
                   "reported beside.")
@click.option("--question-key", default="question", show_default=True,
              help="Key of the question's text (for the transcript's WER).")
@click.option("--figure", metavar="NAME",
              help="The report's name for the share of correct text answers (default: "
                   "'spoken QA: text answer correct').")
@run_tool(TOOL)
def qa(inputs, references, ref_key, summary_file, per_record, judge, judge_cmd,
       batch_size, speech, no_speech, original, question_key, figure):
    """Spoken QA: share of correct text answers and spoken answers.

    An answer is correct when the normalized reference answer occurs in it as whole words
    (the spoken one: in the judge's transcript of its audio); a reference may be a list of
    accepted answers (any one will do). The reference: --references RECORDS ('answer', or
    --ref-key), else the answer's 'reference', else its 'answer' (passed through from the
    question record). Text questions (no units) are scored alike, with --no-speech.
    """
    def score(answers, load, reporter):
        refs, spoken, orig = load(references), load(speech), load(original)
        j = None if no_speech else judge_of(judge, judge_cmd, batch_size, reporter)
        return score_qa(answers, j, spoken, refs, ref_key, question_key, orig, figure)

    return _score(inputs, summary_file, per_record, score)


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="ANSWERS|-...")
@click.option("--reference-units", metavar="RECORDS",
              help="Records with the reference 'units' (by id), e.g. sgpt-units of the "
                   "original audio: unit edit distance.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True),
              help="Wall time of the generation that wrote the answers: units/s.")
@click.option("--summary", "summary_file", metavar="FILE.json",
              help="Write the JSON summary here instead of stdout.")
@click.option("--per-record", metavar="FILE|-",
              help="Also write one JSONL record per answer here.")
@run_tool(TOOL)
def units(inputs, reference_units, seconds, summary_file, per_record):
    """Unit-level figures of answers: generated units, units per second, unit edit
    distance to reference units (deduplicated both)."""
    return _score(inputs, summary_file, per_record, lambda answers, load, reporter: score_units(
        answers, load(reference_units), seconds))


@cli.command()
@click.argument("summaries", nargs=-1, required=True, metavar="SUMMARY.json...")
@click.option("--json", "json_file", metavar="FILE",
              help="Also write every summary, keyed by file name, as one JSON file.")
@run_tool(TOOL)
def report(summaries, json_file):
    """One Markdown table of the figures of summary files (missing files are skipped
    with a warning)."""
    reporter = Reporter(TOOL)
    loaded = {}
    for path in summaries:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            reporter.warn(f"{path}: no such summary (that part was not run)")
            continue
        except RecursionError:
            reporter.error(path, "not a JSON summary (nested too deep)")
            continue
        except (OSError, ValueError) as e:
            reporter.error(path, f"not a JSON summary ({first_line(e)})")
            continue
        if not isinstance(data, dict) or "task" not in data:
            reporter.error(path, "not a summary of sgpt-evaluate")
            continue
        try:  # a field missing or of the wrong kind names its file, not the whole report
            render_report({path: data})
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            what = f"no {e.args[0]!r} field" if isinstance(e, KeyError) else first_line(e)
            reporter.error(path, f"not a summary of sgpt-evaluate ({what})")
            continue
        loaded[path] = data
    if json_file:
        write_json(json_file, {os.path.basename(k): v for k, v in loaded.items()})
    click.echo(render_report(loaded), nl=False)
    return reporter.exit_code


@cli.command("judge")
@click.argument("inputs", nargs=-1, metavar="[RECORDS|-]...")
@click.option("--judge", "kind", type=click.Choice(["whisper", "cmd", "pocketsphinx"]),
              default="whisper", show_default=True, help="The ASR judge.")
@click.option("--judge-cmd", metavar="'ASR {wav}'",
              help="Shell command that prints the transcript of {wav} (implies --judge cmd).")
@click.option("--ref-key", default="text", show_default=True,
              help="Key of the reference text in each record.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Files per Whisper batch.")
@click.option("--summary", "summary_file", metavar="FILE.json",
              help="Also write the summary here.")
@click.option("--group-by", metavar="KEY[,KEY]", multiple=True, help=GROUP_HELP)
@run_tool(TOOL)
def judge(inputs, kind, judge_cmd, ref_key, batch_size, summary_file, group_by):
    """Transcribe the 'audio' of records with the offline ASR judge and score the transcripts
    against the records' reference text: the records, with 'judge_text' added, to stdout;
    the WER summary to stderr (and --summary FILE).

    \b
    Example (the vocoder's resynthesis of held-out sentences, by voice):
      sgpt-vocode -o resynth/ units.jsonl > resynth.jsonl
      sgpt-evaluate judge --summary wer.json --group-by voice resynth.jsonl > judged.jsonl
    """
    if summary_file is not None:
        check_output(summary_file, inputs, "--summary")
    reporter = Reporter(TOOL)
    records = []
    for rec in read_records(inputs or ["-"]):
        if isinstance(rec, RecordError):
            reporter.error(rec.where, rec.reason)
        elif not isinstance(rec.get("audio"), str) or not isinstance(rec.get(ref_key), str):
            reporter.error(rec["id"], f"needs 'audio' and '{ref_key}'")
        else:
            records.append(rec)
    if not records:
        reporter.error("input", "no records to judge")
        return 1
    kwargs = {"batch_size": batch_size} if kind == "whisper" and not judge_cmd else {}
    asr = make_judge(kind, judge_cmd, **kwargs)
    # a file the judge cannot read is an error naming its record; the others are judged
    hyps, failed = transcribe_each(asr, [rec["audio"] for rec in records])
    for i, reason in failed.items():
        reporter.error(records[i]["id"], reason)
    records = [rec for i, rec in enumerate(records) if i not in failed]
    if not records:
        reporter.error("input", "no records to judge")
        return 1
    summary = judge_records(records, asr, ref_key, group_by,
                            [h for i, h in enumerate(hyps) if i not in failed])
    for rec in records:
        click.echo(json.dumps(rec, ensure_ascii=False))
    text = json.dumps(summary)
    click.echo(f"{TOOL}: {text}", err=True)
    if summary_file:
        write_atomic(summary_file, lambda f: f.write((text + "\n").encode()))
    return reporter.exit_code


def main():
    console_main(cli, TOOL)


if __name__ == "__main__":
    main()
