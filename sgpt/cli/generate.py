"""sgpt-generate: prompt records in, answer records out (or a spoken conversation with -i)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

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
)
from sgpt.cli.defaults import embedded_default
from sgpt.core.errors import RecordError, SgptError
from sgpt.units.encoders import CHECKPOINT_ENCODER, DENSE_MODELS

TOOL = "sgpt-generate"

NO_DEFAULT = ("no model given and no embedded default is installed: pass --model DIR, "
              "a model directory of sgpt-train or a transformers one with an extended "
              "tokenizer (the published SpeechGPT-7B-cm, with --adapter SpeechGPT-7B-com "
              "for chain-of-modality answers)")


def _inputs(inputs: tuple[str, ...]) -> tuple[str, ...]:
    if inputs:
        return inputs
    if sys.stdin.isatty():
        raise click.UsageError("no input: pass record files, or pipe records into stdin "
                               "(or talk to the model with -i)")
    return ("-",)


class Session:
    """The model, its tokenizer and a Generator, loaded once."""

    def __init__(self, model: str, adapter: str | None, tokenizer: str | None, device: str,
                 dtype: str, sampling, batch_size: int, prefix_cache: bool):
        if not os.path.exists(model):
            raise SgptError(f"{model}: no such model directory or file")
        from sgpt.core.device import resolve_device, resolve_dtype
        from sgpt.core.errors import CheckpointError
        from sgpt.generate.decode import Generator
        from sgpt.lm.models import load_model_dir, quiet_transformers, vocab_rows
        from sgpt.lm.tokenizer import TOKENIZER_FILES, SpeechTokenizer

        if tokenizer is None and not os.path.isdir(model):
            raise click.UsageError(f"--model {model} is not a directory: pass --tokenizer DIR "
                                   "(the extended tokenizer it was trained with)")
        if (os.path.isfile(os.path.join(model, "train_config.yaml"))
                and not os.path.isfile(os.path.join(model, "sgpt_model.json"))):
            raise SgptError(f"{model}: an sgpt-train run that has not finished (no "
                            "sgpt_model.json yet): start the same sgpt-train command again "
                            "to finish it")
        if tokenizer is not None and not os.path.isdir(tokenizer):
            raise SgptError(f"{tokenizer}: no such tokenizer directory")
        if tokenizer is None and not any(os.path.isfile(os.path.join(model, name))
                                         for name in TOKENIZER_FILES):
            raise SgptError(f"{model}: no tokenizer in the model directory: pass --tokenizer "
                            "DIR (the extended tokenizer of sgpt-tokenize extend it was "
                            "trained with)")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            self.tokenizer = SpeechTokenizer.from_dir(tokenizer or model)
        except SgptError as e:  # name the directory, once
            where = tokenizer or model
            raise SgptError(str(e) if where in str(e) else f"{where}: {e}") from None
        try:
            with quiet_transformers():
                self.model, self.meta = load_model_dir(model, adapter=adapter,
                                                       dtype=self.dtype, device=self.device)
        except CheckpointError as e:
            if adapter is None and "its base model" in str(e):  # the base was moved
                raise SgptError(f"{e}; if it moved, give it as --model and this directory "
                                f"as --adapter {model}") from None
            raise
        rows = vocab_rows(self.model)
        if rows < len(self.tokenizer):
            raise SgptError(f"{model}: the model has {rows} token rows, its tokenizer "
                            f"{len(self.tokenizer)} tokens: not the tokenizer it was trained "
                            "with")
        k = self.meta.get("k")
        if isinstance(k, int) and k != self.tokenizer.k:
            raise SgptError(f"{model}: the model was trained with k={k} units, the tokenizer "
                            f"has {self.tokenizer.k}")
        self.generator = Generator(self.model, self.tokenizer, sampling, batch_size,
                                   prefix_cache)


def _read_config(ctx: click.Context, param, value: str | None):
    """--config FILE.yaml: its settings become the defaults, so flags override them."""
    if value is None:
        return None
    from sgpt.core.files import read_yaml_mapping

    try:
        data = read_yaml_mapping(value)
    except SgptError as e:
        raise click.BadParameter(str(e)) from None
    options = {p.name: p for p in ctx.command.params if isinstance(p, click.Option)}
    settings = {}
    for key, setting in data.items():
        name = str(key).replace("-", "_")
        if name not in options or name in ("config_file", "help", "version"):
            raise click.BadParameter(f"{value}: unknown setting {key!r} (the settings are "
                                     "the long options, e.g. max-new-tokens: 512)")
        try:  # checked here, so that a wrong one names the file, not only the flag
            options[name].type_cast_value(ctx, setting)
        except click.BadParameter as e:
            raise click.BadParameter(f"{value}: setting {key!r}: {e.message}") from None
        settings[name] = setting
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value


def sampling_options(fn):
    fn = click.option("--seed", type=int, default=0, show_default=True,
                      help="Seed of the sampling; a record's answer depends only on the seed "
                           "and the record, not on the batch it shares.")(fn)
    fn = click.option("--min-new-tokens", type=click.IntRange(min=0), default=10,
                      show_default=True, help="No end of sequence before this many tokens.")(fn)
    fn = click.option("--max-new-tokens", type=click.IntRange(min=1), default=2048,
                      show_default=True, help="Tokens generated per answer at most.")(fn)
    fn = click.option("--top-k", type=click.IntRange(min=0), default=50, show_default=True,
                      help="Sample among the k most likely tokens (0: all).")(fn)
    fn = click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.8,
                      show_default=True, help="Nucleus sampling: the most likely tokens that "
                                              "hold this much probability.")(fn)
    fn = click.option("--temperature", type=click.FloatRange(0, min_open=True), default=0.7,
                      show_default=True, help="Sampling temperature.")(fn)
    return click.option("--greedy", is_flag=True,
                        help="Greedy decoding (the most likely token each step) instead of "
                             "sampling.")(fn)


def speech_options(fn):
    fn = click.option("--wav-dir", type=click.Path(file_okay=False), default=".",
                      show_default=True, help="-i: where spoken answers go (answer-N.wav).")(fn)
    fn = click.option("--vocoder-config", type=click.Path(), metavar="config.json",
                      help="-i: the vocoder's config.json, if not beside it.")(fn)
    fn = click.option("--vocoder", type=click.Path(), metavar="DIR|g_FILE",
                      help="-i: unit HiFi-GAN (as for sgpt-vocode) to speak the answers.")(fn)
    fn = click.option("--units-kmeans", type=click.Path(),
                      help="-i: k-means centroids of the units (as for sgpt-units "
                           "--kmeans).")(fn)
    fn = click.option("--units-layer", type=int, default=11, show_default=True,
                      help="-i: HuBERT layer of the units.")(fn)
    fn = click.option("--units-checkpoint", type=click.Path(),
                      help="-i: HuBERT/mHuBERT checkpoint (as for sgpt-units "
                           "--checkpoint).")(fn)
    return click.option("--units-encoder", type=TableChoice(DENSE_MODELS),
                        help="-i: dense features for audio questions, as sgpt-units "
                             f"--encoder (default {CHECKPOINT_ENCODER} when "
                             "--units-checkpoint is given). With no --model and no --units-* "
                             "flags: the embedded default's encoder and k-means.")(fn)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=TOOL)
@click.option("--config", "config_file", metavar="FILE.yaml", is_eager=True, expose_value=False,
              callback=_read_config,
              help="Settings (the long options, e.g. 'max-new-tokens: 512'); flags override.")
@click.option("-m", "--model", metavar="DIR",
              help="Model: an sgpt-train directory, or a transformers directory whose "
                   "tokenizer is extended (SpeechGPT-7B-cm), or a .gguf file (with "
                   "--tokenizer). Default: the embedded default's model (a small "
                   "demonstration; $SGPT_DEFAULT names another, 'none' turns it off).")
@click.option("--adapter", metavar="DIR",
              help="A PEFT adapter applied on top (the published SpeechGPT-7B-com goes on "
                   "SpeechGPT-7B-cm).")
@click.option("--tokenizer", metavar="DIR",
              help="The extended tokenizer (default: the one in the model directory).")
@click.option("--task", type=click.Choice(["chat", "asr", "tts", "continue"]), default="chat",
              show_default=True, help="Task of records that carry no 'task' (a stage-1 "
                                      "model: continue).")
@click.option("--asr-instruction", metavar="TEXT",
              help="Instruction of asr prompts without 'instruction' (default: "
                   "'Transcribe this recording into text.').")
@click.option("--tts-instruction", metavar="TEXT",
              help="Instruction of tts prompts without 'instruction' (default: "
                   "'Read this sentence aloud.').")
@sampling_options
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Prompts decoded together (left-padded; each leaves when it is done).")
@click.option("--truncate", is_flag=True,
              help="Cut the question's units from their end when a prompt does not fit the "
                   "model's context (default: an error naming the record).")
@click.option("--no-prefix-cache", is_flag=True,
              help="Run the system prefix through the model for every prompt instead of "
                   "reusing its key/value cache (for comparison).")
@click.option("-o", "--output", default="-", show_default=True,
              help="Output file (written atomically; a re-run resumes) or - for stdout.")
@click.option("--keep-order", is_flag=True,
              help="Write answers in input order (an answer waits for those before it) "
                   "instead of as each is done.")
@click.option("-i", "--interactive", is_flag=True,
              help="Talk: type text or the path of an audio file; the transcript and text "
                   "answer are printed, the spoken answer goes to a wav file.")
@speech_options
@shard_option
@device_options
@run_options
@click.argument("inputs", nargs=-1, metavar="[RECORDS|-]...")
@run_tool(TOOL)
def cli(model, adapter, tokenizer, task, asr_instruction, tts_instruction, greedy, temperature,
        top_p, top_k, max_new_tokens, min_new_tokens, seed, batch_size, truncate,
        no_prefix_cache, output, keep_order, interactive, units_encoder, units_checkpoint,
        units_layer, units_kmeans, vocoder, vocoder_config, wav_dir, shard, device, dtype,
        progress, strict, inputs):
    """Answer prompt records with a SpeechGPT model.

    RECORDS are JSON Lines with 'text' (a text question), 'units' (a spoken one) or both
    (an instruction about the speech), and optionally 'task': chat (chain of modality:
    transcript, text answer, spoken answer), asr, tts or continue (unit continuation,
    stage-1 models); unit lines ('<sosp><1><2><eosp>', '1 2') are spoken questions. Each
    answer record has 'units'/'text' (the answer: it pipes into sgpt-vocode),
    'transcript', 'raw' (the generated text) and 'prompt' (the input record), and is
    written as soon as it is done. A bad record is named on stderr, the others answered
    (exit status 1).

    \b
    Examples:
      echo '{"id": "q1", "text": "What is the capital of France?"}' \\
          | sgpt-generate --model SpeechGPT-7B-cm --adapter SpeechGPT-7B-com \\
          | sgpt-vocode --vocoder unit_hifigan_dir -o answers/
      sgpt-units --checkpoint mhubert.pt --kmeans km1000.bin question.wav \\
          | sgpt-generate --model out/stage3 --greedy
      sgpt-generate --model out/stage3 -i --units-checkpoint mhubert.pt \\
          --units-kmeans km1000.bin --vocoder unit_hifigan_dir
      sgpt-units q.wav | sgpt-generate | sgpt-vocode -o answers/   # the embedded default

    With no --model, the embedded default (a small demonstration model) answers, and one
    note on stderr says so; with -i, its speech encoder and vocoder too.
    """
    reporter = Reporter(TOOL, strict)
    if model is None:
        if adapter is not None or tokenizer is not None:
            raise click.UsageError("--adapter and --tokenizer go with --model")
        found = embedded_default(TOOL, "--model DIR", NO_DEFAULT)
        model = str(found.model)
        if interactive and not (units_encoder or units_checkpoint or units_kmeans):
            units_encoder, units_kmeans = found.encoder, str(found.kmeans)
        if interactive and not (vocoder or vocoder_config):
            vocoder = str(found.vocoder)
    from sgpt.generate.decode import Sampling

    sampling = Sampling(greedy=greedy, temperature=temperature, top_p=top_p, top_k=top_k,
                        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                        seed=seed)
    instructions = {}
    for name, value in (("asr", asr_instruction), ("tts", tts_instruction)):
        if value is not None:
            from sgpt.lm.prompts import check_text

            try:
                instructions[name] = check_text(value, "instruction", f"--{name}-instruction")
            except RecordError as e:
                raise click.BadParameter(e.reason, param_hint=f"--{name}-instruction"
                                         ) from None
    if interactive:
        if inputs:
            raise click.UsageError("-i reads what you type: give no record files with it")
        # the speech encoder and vocoder load while the model does; the prompt shows
        # when both are ready
        voice = Voice(units_encoder, units_checkpoint, units_layer, units_kmeans, vocoder,
                      vocoder_config, wav_dir, device, dtype)
        session = Session(model, adapter, tokenizer, device, dtype, sampling, 1,
                          not no_prefix_cache)
        voice.ready(session.tokenizer.k)
        return talk(session, voice, reporter, truncate, instructions)
    sources = _inputs(inputs)
    check_output(output, sources)
    shard_index = parse_shard(shard)
    session = Session(model, adapter, tokenizer, device, dtype, sampling, batch_size,
                      not no_prefix_cache)
    ctx = click.get_current_context()
    if (session.meta.get("stage") == "pretrain"
            and ctx.get_parameter_source("task") == click.core.ParameterSource.DEFAULT):
        # a stage-1 model never saw the chat prompt: continuing units is what it can do
        task = "continue"
        reporter.info(f"{model}: a stage-1 (pretrain) model: records without 'task' are "
                      "continued (--task continue; give --task to choose another)")
    return answer_records(session, sources, output, reporter, progress, task, truncate,
                          instructions, keep_order, shard_index)


def answer_records(session: Session, sources, output: str, reporter: Reporter,
                   progress: bool | None, task: str, truncate: bool, instructions: dict,
                   keep_order: bool = False, shard: tuple[int, int] = (0, 1)) -> int:
    """Answer every record of ``sources`` (of its ``shard``: then read whole first)."""
    from sgpt.core.records import RecordWriter, read_records
    from sgpt.generate.decode import answer_record, build_prompt

    writer = RecordWriter(output)
    generator = session.generator
    skipped = 0
    seen: set[str] = set()

    def prompts():
        nonlocal skipped
        records = read_records(sources)
        if shard != (0, 1):
            records = shard_items(list(records), shard)
        for record in records:
            if isinstance(record, RecordError):
                reporter.error(record.where, record.reason)
                continue
            rid = record["id"]
            if rid in writer.done:
                skipped += 1
                continue
            if rid in seen:
                reporter.error(rid, "duplicate id: an answer for it is already being written")
                continue
            seen.add(rid)
            try:
                prompt = build_prompt(record, session.tokenizer, generator.max_length,
                                      truncate, task, instructions, room=1)
            except RecordError as e:
                reporter.error(e.where, e.reason)
                continue
            position[rid] = len(position)
            yield prompt

    position: dict[str, int] = {}  # input order of the prompts, for --keep-order
    waiting: dict[int, dict] = {}
    written = 0
    with progress_bar(progress, None, "answering") as advance:
        for result in generator.generate(prompts()):
            record, answer = answer_record(result, session.tokenizer)
            for note in answer.notes:
                reporter.warn(f"{record['id']}: {note}")
            if not keep_order:
                writer.write(record)
                advance()
                continue
            waiting[position[record["id"]]] = record
            while written in waiting:
                writer.write(waiting.pop(written))
                written += 1
                advance()
    writer.close()
    if skipped:
        reporter.info(f"resumed: {skipped} records already answered in {output}")
    return reporter.exit_code


class Voice:
    """-i: the speech encoder (audio questions) and vocoder (spoken answers), if given,
    loaded in a thread while the model loads (``ready`` waits for them)."""

    def __init__(self, encoder, checkpoint, layer, kmeans, vocoder, vocoder_config, wav_dir,
                 device: str, dtype: str):
        from sgpt.core.device import resolve_device, resolve_dtype

        if (encoder or checkpoint) and kmeans is None:
            raise click.UsageError("-i with audio questions needs --units-kmeans (and "
                                   "--units-checkpoint, or --units-encoder mfcc)")
        self.encoder = self.vocoder = None
        self.wav_dir = Path(wav_dir)
        self._error: BaseException | None = None
        device = resolve_device(device)
        self._thread = threading.Thread(
            target=self._load, daemon=True,
            args=(encoder, checkpoint, layer, kmeans, vocoder, vocoder_config, device,
                  resolve_dtype(dtype, device)))
        self._thread.start()

    def _load(self, encoder, checkpoint, layer, kmeans, vocoder, vocoder_config, device,
              dtype) -> None:
        try:
            if kmeans:
                from sgpt.units.speech_encoder import load_speech_encoder

                self.encoder = load_speech_encoder(encoder or CHECKPOINT_ENCODER, kmeans,
                                                   checkpoint, layer, device, dtype)
            if vocoder:
                from sgpt.vocode.architectures import load_vocoder
                from sgpt.vocode.vocoder import Vocoder

                self.vocoder = Vocoder(load_vocoder(vocoder, vocoder_config, device, dtype))
        except BaseException as e:  # raised in the main thread by ready()
            self._error = e

    def ready(self, k: int) -> None:
        """Wait for the encoder and vocoder; their load's error, or a k that is not the
        model's, is raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self.encoder is not None and self.encoder.meta["k"] != k:
            raise SgptError(f"--units-kmeans has k={self.encoder.meta['k']}, the model's "
                            f"tokenizer {k} units")

    def units(self, path: str) -> dict:
        """A spoken question: the record of an audio file's units."""
        from sgpt.core.audio import load_audio

        if self.encoder is None:
            raise SgptError(f"{path}: to ask with audio, start with --units-kmeans "
                            "(and --units-checkpoint, or --units-encoder mfcc)")
        (result,) = self.encoder([load_audio(path)])
        return {"units": result["units"], "durations": result["durations"],
                "units_meta": self.encoder.meta}

    def speak(self, record: dict, n: int) -> str:
        """Vocode an answer record into wav_dir/answer-N.wav; the path."""
        from sgpt.core.audio import write_wav

        request = self.vocoder.prepare(record)
        (wave,) = self.vocoder([request])
        self.wav_dir.mkdir(parents=True, exist_ok=True)
        path = str(self.wav_dir / f"answer-{n}.wav")
        write_wav(path, wave, self.vocoder.sample_rate)
        return path


def talk(session: Session, voice: Voice, reporter: Reporter, truncate: bool,
         instructions: dict) -> int:
    """-i: read a question a line, print the answer.

    A line is text, the path of an audio file, or, as in the reference CLI, an instruction
    about an audio file: ``Transcribe this. This is input: q.wav``.
    """
    from sgpt.generate.decode import answer_record, build_prompt

    tty = sys.stdin.isatty()
    hint = "text or an audio file path" + ("" if voice.encoder else " (with --units-kmeans)")
    if tty:
        click.echo(f"{TOOL}: ask in {hint}; an empty line or Ctrl-D ends", err=True)
    n = 0
    while True:
        if tty:
            click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line or (tty and not line.strip()):
            return reporter.exit_code
        line = line.strip()
        if not line:
            continue
        n += 1
        record: dict = {"id": f"turn-{n}"}
        try:
            instruction, _, path = line.rpartition("This is input:")
            path = path.strip()
            if os.path.isfile(line):
                record.update(voice.units(line), audio=line)
            elif instruction.strip() and os.path.isfile(path):
                # the reference CLI's form: an instruction about an audio file
                record.update(voice.units(path), audio=path, text=instruction.strip())
            elif _looks_like_audio_path(path):  # a mistyped path is not a text question
                raise SgptError(f"{record['id']}: {path}: no such audio file")
            else:
                record["text"] = line
            prompt = build_prompt(record, session.tokenizer, session.generator.max_length,
                                  truncate, "chat", instructions)
            (result,) = session.generator.generate([prompt])
            out, answer = answer_record(result, session.tokenizer)
            for note in answer.notes:
                reporter.warn(f"{record['id']}: {note}")
            if "transcript" in out:
                click.echo(f"transcript: {out['transcript']}")
            click.echo(f"answer: {out.get('text', '')}")
            if "units" in out:
                if voice.vocoder is not None:
                    click.echo(f"speech: {voice.speak(out, n)}")
                else:
                    click.echo(f"speech: {len(out['units'])} units (--vocoder DIR speaks "
                               "them)")
            sys.stdout.flush()
        except SgptError as e:  # a bad question ends nothing: say so and go on
            reporter.failures += 1
            click.echo(f"{TOOL}: error: {e}", err=True)


AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".sph")


def _looks_like_audio_path(word: str) -> bool:
    """One word naming an audio file: what a user types to ask by voice."""
    return bool(word) and " " not in word and word.lower().endswith(AUDIO_SUFFIXES)


def main():
    console_main(cli, TOOL)


if __name__ == "__main__":
    main()
