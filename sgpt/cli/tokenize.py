"""sgpt-tokenize: the SpeechGPT vocabulary, SpeechInstruct construction, and packing."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import click

from sgpt import __version__
from sgpt.cli.common import (
    Reporter,
    TableChoice,
    check_output,
    console_main,
    device_options,
    parse_shard,
    progress_bar,
    run_options,
    run_tool,
    shard_items,
    shard_option,
    shard_range,
)
from sgpt.core.errors import RecordError, SgptError
from sgpt.core.records import RecordWriter, read_records
from sgpt.units.encoders import CHECKPOINT_ENCODER, DENSE_MODELS

TOOL = "sgpt-tokenize"


def _names(value: str, allowed: Iterable[str], option: str) -> list[str]:
    allowed = list(allowed)
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if not names or bad:
        raise click.BadParameter(f"use a comma-separated subset of {','.join(allowed)}",
                                 param_hint=option)
    return list(dict.fromkeys(names))


def _unit_range(k: int | None, tokenizer: str | None) -> int:
    """k from -k, or from the tokenizer directory's metadata, else 1000."""
    if tokenizer is None:
        return k if k is not None else 1000
    from sgpt.lm.tokenizer import SpeechTokenizer

    tk = SpeechTokenizer.from_dir(tokenizer).k
    if k is not None and k != tk:
        raise click.UsageError(f"-k {k} disagrees with the tokenizer's k={tk}")
    return tk


def unit_options(fn: Callable) -> Callable:
    fn = click.option("--no-dedup", is_flag=True,
                      help="Keep runs of repeated units (by default they are merged, as "
                           "SpeechGPT's units are).")(fn)
    fn = click.option("--tokenizer", type=click.Path(file_okay=False),
                      help="An extended tokenizer directory: k is read from it.")(fn)
    return click.option("-k", "k", type=click.IntRange(min=1), default=None,
                        help="Units are 0..k-1 (default: the tokenizer's, else 1000).")(fn)


def output_option(fn: Callable) -> Callable:
    return click.option("-o", "--output", default="-", show_default=True,
                        help="Output file (written atomically; a re-run resumes) or - for "
                             "stdout.")(fn)


def _build(inputs, output: str, fmt: str, reporter: Reporter, progress,
           make: Callable[[dict], list[dict]], description: str) -> int:
    """Read records, turn each into output records with ``make``, write them; resumable."""
    check_output(output, inputs)
    writer = RecordWriter(output, fmt)
    resumed = set(writer.done)  # ids a killed or finished run already wrote
    written: set[str] = set()
    with progress_bar(progress, None, description) as advance:
        for record in read_records(inputs or ["-"]):
            advance()
            if isinstance(record, RecordError):
                reporter.error(record.where, record.reason)
                continue
            try:
                made = make(record)
            except RecordError as e:
                reporter.error(e.where, e.reason)
                continue
            made = [out for out in made if out["id"] not in resumed]
            if output != "-" and any(out["id"] in written for out in made):
                # a re-run would take the later record for the earlier one and skip it
                reporter.error(record["id"], "id already used by an earlier record (two "
                               "inputs with one file name give the same line ids); -o needs "
                               "unique ids to resume: give records distinct 'id' keys")
                continue
            for out in made:
                writer.write(out)
                written.add(out["id"])
    writer.close()
    return reporter.exit_code


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=TOOL)
def cli():
    """The SpeechGPT vocabulary, SpeechInstruct training data, and packed shards.

    \b
    Subcommands:
      extend BASE -o DIR          add unit tokens and markers to a tokenizer
      pretrain RECORDS            stage 1: <sosp><u>...<eosp> lines
      cross-modal RECORDS         stage 2: ASR and TTS instructions
      chain-of-modality QUADS     stage 3: the four speech/text combinations
      quadruplets PAIRS           speak text question/answer pairs into quadruplets
      pack DATA -o DIR            pre-tokenized shards (ids + loss mask) for training
      unpack DIR                  packed sequences back as text

    \b
    Example:
      sgpt-tokenize extend llama-7b -o tok
      sgpt-units --encoder mfcc --kmeans km.npy corpus/*.wav | sgpt-tokenize pretrain > s1.txt
      sgpt-tokenize pack --tokenizer tok s1.txt -o packed-s1
      sgpt-tokenize cross-modal asr.jsonl | sgpt-tokenize pack --tokenizer tok -o packed-s2
    """


@cli.command()
@click.argument("base")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Directory for the extended tokenizer (replaced atomically).")
@click.option("-k", "k", type=click.IntRange(min=1), default=None,
              help="Unit tokens <0>..<k-1> (default: what BASE records, else 1000).")
@click.option("--units-only", is_flag=True,
              help="Stage-1 vocabulary: units, <sosp>, <eosp> only (33,002 on LLaMA).")
@click.option("--spacing", type=click.Choice(["reference", "plain"]), default=None,
              help="reference (default): added tokens eat the whitespace beside them and "
                   "LLaMA text pieces start new words, as in the published models' "
                   "training (transformers 4.33); plain: today's add_tokens behaviour.")
@run_tool(TOOL)
def extend(base, output, k, units_only, spacing):
    """Extend a transformers tokenizer with SpeechGPT's tokens.

    BASE is a tokenizer directory (or model directory, or hub name), or a .gguf file.
    Added, as ordinary tokens and in the reference's order: <0>..<k-1>, <sosp>, <eosp>,
    then [Human], [SpeechGPT], <eoh>, <eos> (<eoa> stays plain text). LLaMA's 32,000
    entries become 33,002, then 33,006. Tokens already there are not added again. DIR
    also gets sgpt_tokenizer.json (k, markers, ids) so later tools need no flags.

    \b
    Example:
      sgpt-tokenize extend llama-7b-hf -o tok
      sgpt-tokenize extend SmolLM2-135M-Instruct.Q4_1.gguf -k 500 -o tok-smol
    """
    from sgpt.lm.tokenizer import extend as do_extend

    meta = do_extend(base, output, k, dialog=not units_only, spacing=spacing)
    reporter = Reporter(TOOL)
    first, k = meta["first_unit_id"], meta["k"]
    units = (f"ids {first}..{first + k - 1}" if meta["units_contiguous"]
             else "ids not contiguous")
    reporter.info(f"{output}: {meta['size']:,} tokens (base {meta['base_size']:,}; units "
                  f"<0>..<{k - 1}> = {units}; markers " + ", ".join(
                      f"{m}={i}" for m, i in meta["markers"].items()) + ")")
    return 0


@cli.command()
@unit_options
@click.option("--format", "fmt", type=click.Choice(["lines", "jsonl"]), default="lines",
              show_default=True,
              help="lines: <sosp><u>...<eosp> per line (the reference's train.txt); jsonl: "
                   "records with 'id' and 'text'.")
@output_option
@run_options
@click.argument("inputs", nargs=-1, metavar="[RECORDS|-]...")
@run_tool(TOOL)
def pretrain(k, tokenizer, no_dedup, fmt, output, progress, strict, inputs):
    """Stage 1: unit records to <sosp><u1><u2>...<eosp> lines.

    RECORDS: JSONL records with 'units', <sosp> lines or fairseq 'u u u' lines.

    \b
    Example:
      sgpt-units --encoder mfcc --kmeans km.npy corpus/*.wav | sgpt-tokenize pretrain
      sgpt-tokenize pretrain -k 1000 train.km -o train.txt
    """
    from sgpt.lm.prompts import units_text
    from sgpt.tokenize.instruct import pretrain_units

    reporter = Reporter(TOOL, strict)
    k = _unit_range(k, tokenizer)

    def make(record: dict) -> list[dict]:
        units = pretrain_units(record, k, dedup=not no_dedup)
        if fmt == "lines":
            return [{"id": record["id"], "units": units}]
        return [{"id": record["id"], "text": units_text(units)}]

    return _build(inputs, output, "speechgpt" if fmt == "lines" else "jsonl", reporter,
                  progress, make, "pretrain")


@cli.command("cross-modal")
@unit_options
@click.option("--tasks", default="asr,tts", show_default=True,
              help="Which instructions to make: asr (speech in, text out), tts (text in, "
                   "speech out).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Chooses each record's instruction phrasing (by seed, id and task).")
@output_option
@run_options
@click.argument("inputs", nargs=-1, metavar="[RECORDS|-]...")
@run_tool(TOOL)
def cross_modal(k, tokenizer, no_dedup, tasks, seed, output, progress, strict, inputs):
    """Stage 2: records with 'units' and 'text' to ASR and TTS instructions.

    Each record gives {"id": "ID:asr", "prefix", "plain_text"} and the same for tts, in
    SpeechInstruct's format: "[Human]: {instruction} This is input: {input}<eoh>
    [SpeechGPT]: {output}<eoa> ". Instructions come from banks of over 100 phrasings per
    direction. Text holding markup (<eoh>, [SpeechGPT], <sosp>, <12>...) is refused.

    \b
    Example:
      sgpt-units --encoder mfcc --kmeans km.npy --manifest train.tsv \\
        | jq -c '.text = "..."' | sgpt-tokenize cross-modal --seed 1 -o stage2.jsonl
    """
    from sgpt.lm.prompts import TASKS
    from sgpt.tokenize.instruct import cross_modal_examples

    reporter = Reporter(TOOL, strict)
    task_list = _names(tasks, TASKS, "--tasks")
    k = _unit_range(k, tokenizer)
    return _build(inputs, output, "jsonl", reporter, progress,
                  lambda r: cross_modal_examples(r, k, seed, task_list, not no_dedup),
                  "cross-modal")


@cli.command("chain-of-modality")
@unit_options
@click.option("--modes", default="s2s,s2t,t2s,t2t", show_default=True,
              help="Question->answer modalities to make (s = speech, t = text).")
@output_option
@run_options
@click.argument("inputs", nargs=-1, metavar="[QUADRUPLETS|-]...")
@run_tool(TOOL)
def chain_of_modality(k, tokenizer, no_dedup, modes, output, progress, strict, inputs):
    """Stage 3: quadruplets to chain-of-modality instructions.

    A quadruplet is {"id", "question_text", "question_units", "answer_text",
    "answer_units"} (what the quadruplets subcommand writes). s2s gives the published
    format: "[Human]: <sosp>...<eosp><eoh>. [SpeechGPT]: {question}; [ta] {answer}; [ua]
    <sosp>...<eosp><eoa>."; s2t, t2s and t2t leave out what their modalities lack.

    \b
    Example:
      sgpt-tokenize quadruplets --encoder mfcc --kmeans km.npy qa.jsonl \\
        | sgpt-tokenize chain-of-modality -o stage3.jsonl
    """
    from sgpt.lm.prompts import MODES
    from sgpt.tokenize.instruct import chain_of_modality_examples

    reporter = Reporter(TOOL, strict)
    mode_list = _names(modes, MODES, "--modes")
    k = _unit_range(k, tokenizer)
    return _build(inputs, output, "jsonl", reporter, progress,
                  lambda r: chain_of_modality_examples(r, k, mode_list, not no_dedup),
                  "chain-of-modality")


@cli.command()
@click.option("--encoder", type=TableChoice(DENSE_MODELS),
              help="Dense features, as sgpt-units --encoder.")
@click.option("--checkpoint", type=click.Path(),
              help="The encoder's weights, as sgpt-units --checkpoint (a fairseq "
                   f"HuBERT/mHuBERT .pt: implies --encoder {CHECKPOINT_ENCODER}).")
@click.option("--layer", type=int, default=11, show_default=True,
              help="HuBERT layer whose output is clustered.")
@click.option("--kmeans", type=click.Path(), required=True,
              help="k-means centroids: the published sklearn .bin or our .npy.")
@click.option("--tts-cmd", default=None,
              help="TTS command; {voice}, {wav} (output file) and {text} are filled in, no "
                   "shell. Without {text} the text goes to stdin; without {wav} the audio "
                   "comes from stdout. Default: espeak-ng -v {voice} -w {wav} --stdin.")
@click.option("--voices", default=None,
              help="Comma-separated voices to vary among (default: eight espeak-ng English "
                   "voices).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Chooses each side's voice (by seed, id and side).")
@click.option("--jobs", type=int, default=2, show_default=True,
              help="TTS commands run at once.")
@click.option("--batch-size", type=int, default=16, show_default=True,
              help="Pairs spoken, then encoded, together.")
@output_option
@shard_option
@device_options
@run_options
@click.argument("inputs", nargs=-1, metavar="[PAIRS|-]...")
@run_tool(TOOL)
def quadruplets(encoder, checkpoint, layer, kmeans, tts_cmd, voices, seed, jobs, batch_size,
                output, shard, device, dtype, progress, strict, inputs):
    """Speak text question/answer pairs into quadruplets.

    PAIRS: JSONL records with 'question' and 'answer' (or 'question_text' and
    'answer_text'). Both sides are spoken with the TTS command, in voices varied by
    --seed, and encoded into units as sgpt-units does; out come records with
    'question_text', 'question_units', 'answer_text', 'answer_units', 'voices',
    'units_meta' (other keys pass through).

    \b
    Example:
      sgpt-tokenize quadruplets --encoder mfcc --kmeans km.npy qa.jsonl -o quads.jsonl
      sgpt-tokenize quadruplets --checkpoint mhubert.pt --kmeans km1000.bin \\
          --tts-cmd 'piper -m en_US-amy.onnx -f {wav}' --voices amy qa.jsonl
    """
    from sgpt.core.device import resolve_device
    from sgpt.tokenize.instruct import DEFAULT_TTS_CMD, DEFAULT_VOICES, Quadrupleter, TTSCommand
    from sgpt.units.speech_encoder import load_speech_encoder

    reporter = Reporter(TOOL, strict)
    check_output(output, inputs)
    if encoder is None and checkpoint is None:
        raise click.UsageError("give --encoder mfcc or whisper, or --checkpoint HUBERT.pt")
    if jobs < 1 or batch_size < 1:
        raise click.UsageError("--jobs and --batch-size must be at least 1")
    voice_list = [v.strip() for v in voices.split(",") if v.strip()] if voices \
        else list(DEFAULT_VOICES)
    tts = TTSCommand(tts_cmd or DEFAULT_TTS_CMD)
    records = []
    for record in read_records(inputs or ["-"]):
        if isinstance(record, RecordError):
            reporter.error(record.where, record.reason)
        else:
            records.append(record)
    records = shard_items(records, parse_shard(shard))
    writer = RecordWriter(output, "jsonl")
    todo = [r for r in records if r["id"] not in writer.done]
    if len(todo) < len(records):
        reporter.info(f"resuming: {len(records) - len(todo)} of {len(records)} already in "
                      f"{output}")
    dev = resolve_device(device)
    model = load_speech_encoder(encoder or CHECKPOINT_ENCODER, kmeans, checkpoint, layer, dev,
                                dtype, dedup=True)
    speak = Quadrupleter(model, tts, voice_list, seed, jobs)
    with progress_bar(progress, len(todo), "quadruplets") as advance:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            for result in speak(chunk):
                if isinstance(result, RecordError):
                    reporter.error(result.where, result.reason)
                else:
                    writer.write(result)
                advance()
    writer.close()
    return reporter.exit_code


@cli.command()
@click.option("--tokenizer", required=True, type=click.Path(file_okay=False),
              help="The extended tokenizer directory (sgpt-tokenize extend).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Output directory; each shard writes its own part files there.")
@click.option("--stage", type=click.Choice(["auto", "1", "2", "3"]), default="auto",
              show_default=True,
              help="1: units/text lines cut into blocks; 2 or 3: SpeechInstruct sequences "
                   "with a loss mask; auto: from the first good record.")
@click.option("--block-size", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Stage 1: tokens per block (the reference's 1024).")
@click.option("--max-length", type=click.IntRange(min=2), default=512, show_default=True,
              help="Stages 2-3: longest sequence in tokens (the reference's 512).")
@click.option("--overlong", type=click.Choice(["truncate", "drop"]), default="truncate",
              show_default=True,
              help="Stages 2-3: what to do with longer sequences (the reference truncates).")
@click.option("--train-on-inputs", type=click.BOOL, default=True, show_default=True,
              help="Stages 2-3: true masks the system prefix only (reference behaviour); "
                   "false masks the whole human turn, through [SpeechGPT].")
@shard_option
@run_options
@click.argument("inputs", nargs=-1, metavar="[DATA|-]...")
@run_tool(TOOL)
def pack(tokenizer, output, stage, block_size, max_length, overlong, train_on_inputs, shard,
         progress, strict, inputs):
    """Pack training data into pre-tokenized, memory-mappable shards.

    DATA: stage-1 lines (<sosp><u>...<eosp>) or unit records, or SpeechInstruct JSONL
    ({"prefix", "plain_text"}: the published files as they are). Each shard (--shard
    I/N: a contiguous slice of the input lines) writes OUT/part-I-of-N.{json, tokens.bin,
    mask.bin, offsets.bin, names.jsonl}; the JSON header names the tokenizer. An
    interrupted run resumes from its last commit. Same inputs, same bytes.

    \b
    Example:
      sgpt-tokenize pack --tokenizer tok cross_modal_instruction.jsonl -o packed-s2
      sbatch --array=0-7 --wrap 'sgpt-tokenize pack --tokenizer tok s1.txt -o packed-s1'
    """
    from sgpt.lm.tokenizer import SpeechTokenizer
    from sgpt.tokenize.pack import Inputs, PackConfig, Packer

    reporter = Reporter(TOOL, strict)
    index, count = parse_shard(shard)
    config = PackConfig(stage=stage, block_size=block_size, max_length=max_length,
                        train_on_inputs=train_on_inputs, overlong=overlong)
    config.check()
    tok = SpeechTokenizer.from_dir(tokenizer)
    data = Inputs(inputs)
    try:
        select = shard_range(data.count(), index, count)
        with progress_bar(progress, len(select), "packing") as advance:
            packer = Packer(tok, output, config, (index, count), reporter.error,
                            reporter.info, advance)
            header = packer.run(data, select)
    finally:
        data.close()
    reporter.info(f"{output}/{packer.name}: {header['sequences']:,} sequences, "
                  f"{header['tokens']:,} tokens ({header['trained_tokens']:,} trained) from "
                  f"{header['records']:,} records")
    return reporter.exit_code


@cli.command()
@click.argument("packed", type=click.Path(file_okay=False))
@click.option("--tokenizer", type=click.Path(file_okay=False),
              help="Tokenizer directory (default: the one the header names).")
@output_option
@run_tool(TOOL)
def unpack(packed, tokenizer, output):
    """Packed sequences back as text: one JSON record per sequence.

    Each record has 'id' (the source record, or block-N for stage 1), 'text' (the decoded
    tokens, special tokens included), 'trained_text' (the tokens the loss is computed
    on), 'tokens' and 'trained'.

    \b
    Example:
      sgpt-tokenize unpack packed-s2 | head -1 | jq -r .trained_text
    """
    import numpy as np

    from sgpt.lm.tokenizer import SpeechTokenizer
    from sgpt.tokenize.pack import PackedDataset

    check_output(output)

    ds = PackedDataset(packed)
    path = tokenizer or ds.tokenizer.get("path")
    if not path:
        raise SgptError(f"{packed}: the header names no tokenizer directory: give --tokenizer")
    tok = SpeechTokenizer.from_dir(path)
    writer = RecordWriter(output, "jsonl")
    for i in range(len(ds)):
        ids, mask = ds[i]
        name = ds.name(i) or f"block-{i}"
        if name in writer.done:
            continue
        trained = np.asarray(ids)[np.asarray(mask) == 1]
        writer.write({"id": name, "text": tok.decode(ids), "trained_text": tok.decode(trained),
                      "tokens": int(len(ids)), "trained": int(len(trained))})
    writer.close()
    return 0


def main():
    console_main(cli, TOOL)


if __name__ == "__main__":
    main()
