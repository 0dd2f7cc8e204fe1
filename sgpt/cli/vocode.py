"""sgpt-vocode: unit records back to speech (vocode), and unit HiFi-GAN training (train)."""

from __future__ import annotations

import io
import json
import os
import struct
import sys

import click
import numpy as np

from sgpt import __version__
from sgpt.cli.common import (
    DefaultGroup,
    Reporter,
    StrictStop,
    check_output_dir,
    console_main,
    device_options,
    progress_bar,
    run_options,
    run_tool,
)
from sgpt.cli.defaults import embedded_default
from sgpt.core.errors import RecordError, SgptError
from sgpt.core.files import safe_name

TOOL = "sgpt-vocode"

NO_DEFAULT = ("no vocoder given and no embedded default is installed: pass --vocoder DIR "
              "(a directory holding g_XXXXXXXX and config.json, such as the published "
              "unit_hifigan_mhubert_vp_en_es_fr_it3_400k_layer11_km1000_lj_dur) or "
              "--vocoder g_XXXXXXXX --config config.json")

# Records are vocoded in windows of this many batches (sorted by length inside a window).
WINDOW_BATCHES = 4


def _inputs(inputs: tuple[str, ...]) -> tuple[str, ...]:
    if inputs:
        return inputs
    if sys.stdin.isatty():
        raise click.UsageError("no input: pass record files (JSONL, <sosp> lines or .km "
                               "lines) or pipe them into stdin")
    return ("-",)


# What sox writes as the size of a WAV whose length it cannot know (its MS_UNSPEC): sox
# then reads to the end of the stream without a warning; libsndfile reads it too.
UNKNOWN_SIZE = 0x7FFFF000
WAV_HEADER_BYTES = 44


def wav_header(sample_rate: int, samples: int | None) -> bytes:
    """The 44-byte header of a mono 16-bit PCM WAV; ``samples=None``: length unknown."""
    data = UNKNOWN_SIZE if samples is None else 2 * samples
    return (b"RIFF" + struct.pack("<I", data + 36) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16)
            + b"data" + struct.pack("<I", data))


def pcm16(wave: np.ndarray) -> bytes:
    """Little-endian 16-bit samples, converted exactly as the -o DIR files are (libsndfile)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), 16000, format="RAW", subtype="PCM_16",
             endian="LITTLE")
    return buf.getvalue()


class Output:
    """Where the audio goes: ``DIR/{id}.wav`` plus records on stdout, or one WAV on stdout."""

    def __init__(self, target: str, sample_rate: int, overwrite: bool, reporter: Reporter):
        self.target, self.sample_rate, self.overwrite = target, sample_rate, overwrite
        self.reporter = reporter
        self.stream = target == "-"
        self.stream_samples = 0
        self.stream_started = False
        self.written: set[str] = set()
        if not self.stream:
            try:
                os.makedirs(target, exist_ok=True)
            except OSError as e:
                raise SgptError(f"{target}: cannot create output directory "
                                f"({e.strerror or e})") from None

    def path(self, record: dict) -> str:
        return os.path.join(self.target, safe_name(record["id"], ".wav"))

    def done(self, record: dict) -> bool:
        """Whether a previous run already wrote this record's audio (and prints it again)."""
        if self.stream or self.overwrite:
            return False
        path = self.path(record)
        if path in self.written or not os.path.isfile(path):
            return False
        import soundfile as sf

        try:
            info = sf.info(path)
        except Exception:  # a foreign or broken file: vocode again
            return False
        self._print(record, path, info.frames / info.samplerate)
        self.written.add(path)
        return True

    def claim(self, record: dict) -> bool:
        """False (and an error) for a second record of this run with the same file name."""
        if self.stream:
            return True
        path = self.path(record)
        if path in self.written:
            self.reporter.error(record["id"], f"duplicate id: {path} was already written by "
                                              "this run")
            return False
        self.written.add(path)
        return True

    def write(self, record: dict, wave: np.ndarray) -> None:
        if self.stream:
            self._stream(pcm16(wave))
            return
        from sgpt.core.audio import write_wav

        path = self.path(record)
        write_wav(path, wave, self.sample_rate)
        self._print(record, path, len(wave) / self.sample_rate)

    def _print(self, record: dict, path: str, seconds: float) -> None:
        out = dict(record)
        if isinstance(record.get("audio"), str) and record["audio"] != path:
            out["source_audio"] = record["audio"]
        out["audio"] = path
        out["seconds"] = round(seconds, 4)
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def _stream(self, pcm: bytes) -> None:
        """Audio goes out as it is vocoded (``| play -`` starts at once, memory stays flat):
        the header's sizes say "unknown" as sox's do on a pipe, and are made exact at the end
        when stdout is a file."""
        out = sys.stdout.buffer
        if not self.stream_started:
            out.write(wav_header(self.sample_rate, None))
            self.stream_started = True
        out.write(pcm)
        out.flush()
        self.stream_samples += len(pcm) // 2

    def close(self) -> None:
        if not self.stream:
            return
        self._stream(b"")  # an input with no good record still gives a (silent) WAV
        out = sys.stdout.buffer
        try:
            seekable = out.seekable()
        except (OSError, ValueError):
            seekable = False
        if seekable and 2 * self.stream_samples < UNKNOWN_SIZE:
            end = out.tell()
            out.seek(end - 2 * self.stream_samples - WAV_HEADER_BYTES)
            out.write(wav_header(self.sample_rate, self.stream_samples))
            out.seek(end)
            out.flush()


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=TOOL)
def cli():
    """Discrete speech units back to 16 kHz speech with a unit vocoder (HiFi-GAN or Vocos).

    \b
    Subcommands (vocode is the default):
      sgpt-vocode [vocode] RECORDS...     a WAV per record (or one WAV stream)
      sgpt-vocode train RECORDS... -o DIR train a unit vocoder on (audio, units)

    \b
    Example:
      sgpt-generate q.jsonl | sgpt-vocode --vocoder unit_hifigan_dir -o answers/
      echo '<sosp><12><7><7><401><eosp>' | sgpt-vocode --vocoder unit_hifigan_dir -o - | play -
    """


@cli.command()
@click.option("--vocoder", metavar="DIR|G_FILE",
              help="Unit HiFi-GAN: a directory holding g_XXXXXXXX (the newest is used) and "
                   "config.json, or a g_XXXXXXXX file (config.json beside it, or --config). "
                   "Default: the embedded default's vocoder (a small demonstration; "
                   "$SGPT_DEFAULT names another, 'none' turns it off).")
@click.option("--config", "config_file", metavar="config.json", type=click.Path(),
              help="The vocoder's config.json, when it is not beside the g_ file.")
@click.option("-o", "--output", metavar="DIR|-",
              help="DIR: write DIR/{id}.wav (atomically; a re-run skips those there) and print "
                   "each record with 'audio' and 'seconds' added. -: one WAV stream of all "
                   "utterances on stdout.")
@click.option("--dur-prediction", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True,
              help="auto: a record's 'durations' if it has them, else predicted durations for "
                   "deduplicated units, else one frame per unit. on: always predict. off: "
                   "never predict.")
@click.option("--speaker", type=int, default=None,
              help="Speaker id of a multi-speaker vocoder (default 0).")
@click.option("--batch-size", type=int, default=8, show_default=True,
              help="Utterances (or chunks) per forward pass.")
@click.option("--chunk", type=click.IntRange(min=1), default=None, metavar="N",
              help="Vocode sequences longer than N frames (20 ms each) in pieces of N frames, "
                   "each with the generator's receptive field of context: no audible seam, "
                   "bounded memory.")
@click.option("--overwrite", is_flag=True,
              help="Vocode again records whose DIR/{id}.wav already exists.")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True,
              help="A record asking for more audio (its durations, or a frame a unit) is "
                   "refused by name before anything is allocated.")
@device_options
@run_options
@click.argument("inputs", nargs=-1, metavar="[RECORDS|-]...")
@run_tool(TOOL)
def vocode(vocoder, config_file, output, dur_prediction, speaker, batch_size, chunk, overwrite,
           max_seconds, device, dtype, progress, strict, inputs):
    """Vocode unit records into speech.

    RECORDS are JSONL records with 'units' (and, optionally, 'durations', 'units_meta'),
    SpeechGPT '<sosp><12><7>...<eosp>' lines or fairseq '12 7 ...' .km lines (not
    deduplicated); - or no argument reads stdin. A bad record is named on stderr and the
    others are still vocoded (exit status 1).

    \b
    Examples:
      sgpt-units --checkpoint mhubert.pt --kmeans km1000.bin a.wav \\
          | sgpt-vocode --vocoder unit_hifigan_dir -o resynth/
      sgpt-vocode --vocoder g_00500000 --config config.json -o - units.km | sox - out.flac
      sgpt-units q.wav | sgpt-generate | sgpt-vocode -o answers/   # the embedded default

    With no --vocoder, the embedded default's vocoder (a small demonstration model) speaks,
    and one note on stderr says so.
    """
    reporter = Reporter(TOOL, strict)
    if output is None:
        raise click.UsageError("pass -o DIR (DIR/{id}.wav, records on stdout) or -o - (one "
                               "WAV stream on stdout)")
    if output == "-" and sys.stdout.isatty():
        raise click.UsageError("-o -: stdout is a terminal; pipe it (| play -, | sox - x.flac)")
    if batch_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--batch-size")
    check_output_dir(output)
    sources = _inputs(inputs)
    if vocoder is None:
        if config_file is not None:
            raise click.UsageError("--config goes with --vocoder g_XXXXXXXX")
        vocoder = str(embedded_default(TOOL, "--vocoder DIR", NO_DEFAULT).vocoder)

    from sgpt.core.device import resolve_device, resolve_dtype
    from sgpt.core.records import read_records
    from sgpt.vocode.architectures import load_vocoder
    from sgpt.vocode.vocoder import Vocoder

    dev = resolve_device(device)
    model = load_vocoder(vocoder, config_file, dev, resolve_dtype(dtype, dev))
    try:
        voc = Vocoder(model, dur_prediction, speaker, batch_size, chunk,
                      max_seconds=max_seconds)
    except SgptError as e:
        raise click.UsageError(str(e)) from None
    out = Output(output, voc.sample_rate, overwrite, reporter)

    def flush(window: list) -> None:
        if not window:
            return
        waves = voc([request for _, request in window])
        for (record, _), wave in zip(window, waves):
            out.write(record, wave)
            advance()
        window.clear()

    window: list = []
    with progress_bar(progress, None, "vocoding") as advance:
        try:
            for record in read_records(sources):
                request = _request(record, voc, out, reporter)
                if request is None:
                    continue
                window.append((record, request))
                if len(window) >= WINDOW_BATCHES * batch_size:
                    flush(window)
        except StrictStop:  # --strict stops at a bad record: what came before is written
            flush(window)
            out.close()
            raise
        flush(window)
    out.close()
    return reporter.exit_code


def _request(record, voc, out: Output, reporter: Reporter):
    """The vocoder request of a record, or None (reported, or done by an earlier run)."""
    if isinstance(record, RecordError):
        reporter.error(record.where, record.reason)
        return None
    if out.done(record):
        return None
    try:
        request = voc.prepare(record)
    except RecordError as e:
        reporter.error(e.where, e.reason)
        return None
    if not out.claim(record):
        return None
    if voc.needs_one_frame_warning(request, record):
        reporter.warn("deduplicated units without 'durations', and this vocoder has no "
                      "duration predictor: each unit is vocoded as one 20 ms frame")
    return request


@cli.command()
@click.option("-o", "--output", required=True, metavar="DIR", type=click.Path(file_okay=False),
              help="Checkpoint directory: config.json, train_log.jsonl and g_XXXXXXXX + "
                   "do_XXXXXXXX (HiFi-GAN) or g_XXXXXXXX.safetensors + state/ (Vocos). A "
                   "run resumes from the newest checkpoint there.")
@click.option("--config", "config_file", metavar="config.json", type=click.Path(),
              help="Vocoder config in the published (speech-resynthesis) format: architecture "
                   "and training knobs. Default: DIR/config.json when resuming, else that of "
                   "--init, else the published mHuBERT-km1000 config.")
@click.option("--steps", type=click.IntRange(min=1), default=500000, show_default=True,
              help="Train until this many optimizer updates in all (resumed runs included).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Segments per update (default: batch_size of the config, 16).")
@click.option("--segment-size", type=click.IntRange(min=1), default=None, metavar="SAMPLES",
              help="Samples per training segment, a multiple of code_hop_size (default: "
                   "segment_size of the config, 8960).")
@click.option("--lr", "learning_rate", type=float, default=None,
              help="Learning rate (default: learning_rate of the config, 0.0002).")
@click.option("--seed", type=int, default=None,
              help="Seed of the init, the segment draws and dropout (default: seed of the "
                   "config, 1234).")
@click.option("--checkpoint-interval", type=click.IntRange(min=1), default=5000,
              show_default=True, help="Write a checkpoint every N updates (and at the end).")
@click.option("--keep", type=click.IntRange(min=1), default=None, metavar="N",
              help="Keep only the N newest generators, g_ files (default: all). Only the "
                   "newest optimizer state is kept in any case: it is needed only to resume.")
@click.option("--log-interval", type=click.IntRange(min=1), default=100, show_default=True,
              help="Append losses to train_log.jsonl (and stderr) every N updates.")
@click.option("--init", metavar="DIR|G_FILE", default=None,
              help="Start a new run from this generator (a g_ file, or a vocoder directory's "
                   "newest): fine-tune a published or earlier vocoder on new audio. Its "
                   "config (and architecture) unless --config gives one of the same "
                   "architecture; fresh discriminators; ignored when DIR already holds a "
                   "checkpoint to resume.")
@device_options
@run_options
@click.argument("inputs", nargs=-1, metavar="[RECORDS|-]...")
@run_tool(TOOL)
def train(output, config_file, steps, batch_size, segment_size, learning_rate, seed,
          checkpoint_interval, keep, log_interval, init, device, dtype, progress, strict,
          inputs):
    """Train a unit vocoder on (audio, units) records: a unit HiFi-GAN (the published
    layout, g_/do_ files), or a unit Vocos when the config says "arch": "vocos" (a
    ConvNeXt at the unit frame rate and an inverse-STFT head: about 1/10 of the HiFi-GAN's
    compute, trainable on a CPU; safetensors files).

    Each record needs 'audio' and 'units' with 'durations' (as sgpt-units writes them), or
    units not deduplicated ('units_meta': {'dedup': false}, as --no-dedup writes them),
    50 frames per second. Multi-speaker configs also need an integer 'speaker'.

    \b
    Example:
      sgpt-units --checkpoint mhubert.pt --kmeans km1000.bin corpus/*.wav > train.jsonl
      sgpt-vocode train --config config.json -o vocoder/ --steps 400000 train.jsonl
      python3 examples/vocoder/make_config.py -k 100 --arch vocos > vocos.json
      sgpt-vocode train --config vocos.json -o vocos/ --steps 20000 train.jsonl
      sgpt-vocode --vocoder vocoder/ -o resynth/ train.jsonl

    SIGINT (Ctrl-C) or SIGTERM (timeout, Slurm) finishes the current update, writes a
    checkpoint and exits (130 or 143); a second signal aborts without saving.
    """
    import importlib

    from sgpt.core.device import resolve_device, slow_bfloat16_note
    from sgpt.core.records import read_records
    from sgpt.core.training import Interrupted, interrupted_note, training_dtype
    from sgpt.vocode.architectures import TRAINERS, given_config, vocoder_arch

    reporter = Reporter(TOOL, strict)
    sources = _inputs(inputs)
    config_file = given_config(output, config_file, init)  # a new run from --init: its own
    arch = vocoder_arch(output, config_file)
    if arch not in TRAINERS:
        raise SgptError(f"sgpt-vocode train cannot train a {arch!r} vocoder (it trains "
                        f"{', '.join(TRAINERS)})")
    trainer_module = importlib.import_module(TRAINERS[arch])
    make_example = trainer_module.make_example
    opts = trainer_module.TrainOptions(
        output=output, steps=steps, checkpoint_interval=checkpoint_interval,
        log_interval=log_interval, batch_size=batch_size, segment_size=segment_size,
        learning_rate=learning_rate, seed=seed, keep=keep, init=init)
    cfg = trainer_module.training_config(opts, config_file)
    dev = resolve_device(device)
    examples = []
    for record in read_records(sources):
        if isinstance(record, RecordError):
            reporter.error(record.where, record.reason)
            continue
        try:
            examples.append(make_example(record, cfg))
        except RecordError as e:
            reporter.error(e.where, e.reason)
    if not examples:
        raise SgptError("no usable training records")
    amp = training_dtype(dtype, dev)
    note = slow_bfloat16_note(amp, dev)
    if note:
        reporter.info(note)
    reporter.info(f"training a {arch} vocoder on {len(examples)} utterances, {dev}"
                  + (f", {str(amp).replace('torch.', '')} autocast" if amp else ""))
    trainer = trainer_module.Trainer(cfg, opts, dev, amp, info=reporter.info)
    with progress_bar(progress, steps, "training") as advance:
        try:
            trainer.train(examples, advance)
        except RecordError as e:  # audio that became unreadable mid-run
            reporter.error(e.where, e.reason)
        except Interrupted as e:
            reporter.info(interrupted_note(e, output))
            return 128 + e.signum
    return reporter.exit_code


def main():
    console_main(cli, TOOL)


if __name__ == "__main__":
    main()
