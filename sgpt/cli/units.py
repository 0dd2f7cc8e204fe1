"""sgpt-units: speech to discrete units (encode), and k-means learning (learn-kmeans)."""

from __future__ import annotations

import codecs
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from sgpt import __version__
from sgpt.cli.common import (
    DefaultGroup,
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
from sgpt.core.audio import SAMPLE_RATE, load_audio, load_audio_bytes, looks_like_audio
from sgpt.core.errors import AudioError, RecordError, SgptError
from sgpt.core.records import FORMATS, RecordWriter, parse_line
from sgpt.units.encoders import CHECKPOINT_ENCODER, DENSE_MODELS, encoder_help

TOOL = "sgpt-units"

# Audio is read ahead in windows of this many batches, so batches can be sorted by length.
WINDOW_BATCHES = 4
# ... and at most this many files: finished records are written at least every 16 files, so
# a killed run over many short files keeps what it did (a re-run resumes after them)
WINDOW_FILES = 16

REAL = ("--encoder mfcc|whisper --kmeans CENTROIDS.npy, or --encoder hubert --checkpoint "
        "mhubert_base_vp_en_es_fr_it3.pt --layer 11 --kmeans "
        "mhubert_base_vp_en_es_fr_it3_L11_km1000.bin")
NO_DEFAULT = f"no encoder given and no embedded default is installed: pass {REAL}"
NO_ENCODER = f"no encoder given: pass {REAL}"
DEFAULT_FLAGS = "--checkpoint/--kmeans"


@dataclass
class Item:
    """One utterance to encode: where its audio is, and the record it becomes."""

    record: dict          # the output record so far: id and any keys passed through
    audio: str | bytes    # a path, or the bytes of a whole audio file read from stdin
    where: str            # how an error names it

    @property
    def id(self) -> str:
        return self.record["id"]


def _path_item(path: str, where: str | None = None) -> Item:
    return Item({"id": Path(path).stem, "audio": path}, path, where or path)


def _stdin_items(reporter: Reporter) -> list[Item]:
    """stdin holds one audio file, or a list of paths / JSON records with ``audio``."""
    data = sys.stdin.buffer.read()
    if looks_like_audio(data[:4]):
        return [Item({"id": "stdin"}, data, "stdin")]
    if b"\0" in data:  # binary, and not audio libsndfile knows: not lines of anything
        reporter.error("stdin", "neither an audio file nor lines of paths or records")
        return []
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    items = []
    for lineno, raw in enumerate(data.splitlines(), 1):
        try:  # a line that is not UTF-8 is an error of its own, never a mangled path or text
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            reporter.error(f"stdin:{lineno}", f"not UTF-8 text (byte 0x{raw[e.start]:02x} at "
                                              f"column {e.start + 1})")
            continue
        if not line:
            continue
        if not line.startswith("{"):
            items.append(_path_item(line))
            continue
        try:
            record = parse_line(line, f"stdin_{lineno}", f"stdin:{lineno}")
        except RecordError as e:
            reporter.error(e.where, e.reason)
            continue
        if not record.get("audio"):
            reporter.error(record["id"], "record has no 'audio' path")
            continue
        items.append(Item(record, record["audio"], record["audio"]))
    return items


def _manifest_items(manifest: str, reporter: Reporter) -> list[Item]:
    """A fairseq manifest: the audio root on line 1, then ``relative/path<TAB>n_samples``."""
    try:
        with open(manifest, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise SgptError(f"{manifest}: no such manifest file") from None
    except IsADirectoryError:
        raise SgptError(f"{manifest}: is a directory, not a manifest file") from None
    except UnicodeDecodeError:
        raise SgptError(f"{manifest}: not UTF-8 text, not a manifest") from None
    except OSError as e:
        raise SgptError(f"{manifest}: cannot read manifest ({e.strerror or e})") from None
    if not lines:
        raise SgptError(f"{manifest}: empty manifest (line 1 must be the audio root)")
    root = lines[0].strip()
    items = []
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        rel = line.split("\t")[0].strip()
        items.append(_path_item(os.path.join(root, rel), f"{manifest}:{lineno}: {rel}"))
    return items


def gather_items(inputs: tuple[str, ...], manifest: str | None, reporter: Reporter
                 ) -> list[Item]:
    if not inputs and manifest is None:
        if sys.stdin.isatty():
            raise click.UsageError("no input: pass audio files, --manifest TSV, or pipe "
                                   "paths (or one audio file) into stdin")
        inputs = ("-",)
    items = _manifest_items(manifest, reporter) if manifest else []
    for source in inputs:
        items += _stdin_items(reporter) if source == "-" else [_path_item(source)]
    return items


def _unique_ids(items: list[Item], reporter: Reporter) -> list[Item]:
    """Items whose ids are not taken by an earlier one; each later one is an error.

    A resumed ``-o FILE`` skips the ids it holds, so a second file with the same id (the same
    stem in another directory) would be lost without a word on a re-run.
    """
    first: dict[str, str] = {}
    kept = []
    for item in items:
        if item.id in first:
            reporter.error(item.where, f"id {item.id!r} is already that of {first[item.id]}; "
                           "-o needs unique ids (give JSON records with an 'id' key)")
            continue
        first[item.id] = item.where
        kept.append(item)
    return kept


def load_item(item: Item):
    if isinstance(item.audio, bytes):
        return load_audio_bytes(item.audio)
    return load_audio(item.audio)


def windows(items: list[Item], reporter: Reporter, window_samples: int, advance,
            max_files: int = WINDOW_FILES):
    """Lists of (item, waveform) of about ``window_samples`` samples and at most
    ``max_files`` files; bad audio reported."""
    window: list = []
    total = 0
    for item in items:
        try:
            wave = load_item(item)
        except AudioError as e:
            if window:  # what came before a failure is written before it is reported
                yield window
                window, total = [], 0
            reporter.error(item.where, str(e))
            advance()
            continue
        window.append((item, wave))
        total += len(wave)
        if total >= window_samples or len(window) >= max_files:
            yield window
            window, total = [], 0
    if window:
        yield window


def encoder_options(fn):
    fn = click.option("--layer", type=int, default=11, show_default=True,
                      help="HuBERT layer whose output is clustered (fairseq's output_layer).")(fn)
    fn = click.option("--checkpoint", type=click.Path(),
                      help="The encoder's weights: a fairseq HuBERT/mHuBERT .pt file, or a "
                           f"transformers HubertModel directory (implies --encoder "
                           f"{CHECKPOINT_ENCODER} unless --encoder says otherwise).")(fn)
    return click.option("--encoder", type=TableChoice(DENSE_MODELS), help=encoder_help())(fn)


def input_options(fn):
    fn = click.option("--batch-seconds", type=click.FloatRange(min=0, min_open=True),
                      default=60.0, show_default=True,
                      help="Audio per padded batch, in seconds.")(fn)
    return click.option("--manifest", type=click.Path(),
                        help="fairseq .tsv manifest (root on line 1, then path<TAB>samples).")(fn)


def _dense_choice(encoder: str | None, checkpoint: str | None) -> str:
    if encoder is None and checkpoint is None:
        raise click.UsageError(NO_ENCODER)
    return encoder or CHECKPOINT_ENCODER


def _encode_choice(encoder: str | None, checkpoint: str | None, kmeans: str | None
                   ) -> tuple[str, str]:
    """(encoder, k-means) of encode: as given, or the embedded default's.

    No --checkpoint and no --kmeans: the default's encoder and k-means; ``--encoder E``
    alone too, when E is the default's encoder (its k-means is for that encoder only).
    """
    from sgpt.core.default import installed, load_default

    if kmeans is None and checkpoint is None:
        own = load_default().encoder if encoder is not None and installed() else None
        if encoder is None or encoder == own:
            found = embedded_default(TOOL, DEFAULT_FLAGS, NO_DEFAULT)
            return found.encoder, str(found.kmeans)
        raise click.UsageError("--kmeans CENTROIDS is needed to turn features into units"
                               + (f" (the embedded default's k-means is for --encoder {own} "
                                  "only)" if own else ""))
    if kmeans is None:
        raise click.UsageError("--kmeans CENTROIDS is needed to turn features into units")
    if encoder is None and checkpoint is None:
        raise click.UsageError("--kmeans needs the encoder whose features it clusters: "
                               "--encoder mfcc|whisper, or --checkpoint HUBERT.pt")
    return encoder or CHECKPOINT_ENCODER, kmeans


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=TOOL)
def cli():
    """Speech to discrete units, as SpeechGPT hears it.

    \b
    Subcommands (encode is the default):
      sgpt-units [encode] AUDIO...        units records for audio files
      sgpt-units learn-kmeans AUDIO...    k-means centroids from a corpus

    \b
    Example:
      sgpt-units --checkpoint mhubert.pt --kmeans km1000.bin q.wav | sgpt-generate
      sgpt-units q.wav | sgpt-generate | sgpt-vocode -o answers/   # the embedded default
    """


@cli.command()
@encoder_options
@click.option("--kmeans", type=click.Path(),
              help="k-means centroids: the published sklearn .bin (read without sklearn) "
                   "or our .npy [k, dim]. Default, with no --checkpoint: the embedded "
                   "default's encoder and k-means ($SGPT_DEFAULT names another default, "
                   "'none' turns it off).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl", show_default=True,
              help="jsonl records, speechgpt <sosp><u>..<eosp> lines, or fairseq 'u u' lines.")
@click.option("--no-dedup", is_flag=True, help="Keep runs of repeated units (no durations).")
@input_options
@click.option("-o", "--output", default="-", show_default=True,
              help="Output file (written atomically; a re-run resumes) or - for stdout.")
@shard_option
@device_options
@run_options
@click.argument("inputs", nargs=-1, metavar="[AUDIO|-]...")
@run_tool(TOOL)
def encode(encoder, checkpoint, layer, kmeans, fmt, no_dedup, manifest, batch_seconds, output,
           shard, device, dtype, progress, strict, inputs):
    """Encode audio files into unit records.

    AUDIO is any file libsndfile reads (wav, flac, ogg...; any rate, any channels). With -
    or no argument, stdin holds one audio file, or paths / JSON records with an 'audio'
    key, one per line. Each record gets 'units', 'durations' (unless --no-dedup) and
    'units_meta'; the keys of input records pass through.

    With no --kmeans and no --checkpoint (and no --encoder, or the default's own), the
    embedded default's encoder and k-means make the units sgpt-generate's default model
    reads, and one note on stderr says so.

    \b
    Examples:
      sgpt-units question.wav | sgpt-generate | sgpt-vocode -o answers/
      sgpt-units --checkpoint mhubert_base_vp_en_es_fr_it3.pt --layer 11 \\
          --kmeans mhubert_base_vp_en_es_fr_it3_L11_km1000.bin a.wav b.flac
      find corpus -name '*.flac' | sgpt-units --encoder mfcc --kmeans km.npy \\
          --format speechgpt -o units.txt
    """
    reporter = Reporter(TOOL, strict)
    check_output(output, inputs)
    dense, kmeans = _encode_choice(encoder, checkpoint, kmeans)
    shard_index = parse_shard(shard)
    items = shard_items(gather_items(inputs, manifest, reporter), shard_index)
    if output != "-":
        items = _unique_ids(items, reporter)
    from sgpt.core.device import resolve_device
    from sgpt.units.speech_encoder import load_speech_encoder

    dev = resolve_device(device)
    model = load_speech_encoder(dense, kmeans, checkpoint, layer, dev, dtype, dedup=not no_dedup)
    meta = model.meta
    writer = RecordWriter(output, fmt)
    todo = [item for item in items if item.id not in writer.done]
    if len(todo) < len(items):
        reporter.info(f"resuming: {len(items) - len(todo)} of {len(items)} already in {output}")
    batch_samples = int(batch_seconds * SAMPLE_RATE)
    with progress_bar(progress, len(todo), "encoding") as advance:
        for window in windows(todo, reporter, WINDOW_BATCHES * batch_samples, advance):
            results = model([wave for _, wave in window], max_samples=batch_samples)
            for (item, _), result in zip(window, results):
                writer.write({**item.record, **result, "units_meta": meta})
                advance()
    writer.close()
    return reporter.exit_code


@cli.command("learn-kmeans")
@encoder_options
@click.option("-k", "k", type=click.IntRange(min=1), required=True,
              help="Number of clusters (units).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the frame sample and of k-means++.")
@click.option("--max-frames", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Frames kept in memory, sampled uniformly from the whole corpus.")
@click.option("--max-iter", type=click.IntRange(min=1), default=100, show_default=True,
              help="Lloyd iterations at most.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Mini-batch k-means with this many frames per step (default: full batch).")
@click.option("--center", type=click.Choice(["auto", "positions", "none"]), default="auto",
              show_default=True,
              help="positions: subtract the corpus's mean feature at each position of the "
                   "encoder's window before clustering (and before every nearest centroid, "
                   "written as OUTPUT.positions.npy), for encoders with absolute positions "
                   "(whisper); auto: positions where the encoder has them, else none.")
@input_options
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Centroids .npy [k, dim]; a JSON sidecar (.json) is written beside it.")
@device_options
@run_options
@click.argument("inputs", nargs=-1, metavar="[AUDIO|-]...")
@run_tool(TOOL)
def learn_kmeans(encoder, checkpoint, layer, k, seed, max_frames, max_iter, batch_size, center,
                 manifest, batch_seconds, output, device, dtype, progress, strict, inputs):
    """Learn k-means centroids over the dense features of a corpus.

    \b
    Example:
      sgpt-units learn-kmeans --encoder mfcc -k 100 --seed 0 -o km100.npy corpus/*.wav
      sgpt-units --encoder mfcc --kmeans km100.npy corpus/*.wav > units.jsonl
      sgpt-units learn-kmeans --encoder whisper -k 100 -o whisper_km100.npy corpus/*.wav
    """
    from sgpt.core.device import resolve_device
    from sgpt.units.kmeans import FrameReservoir, PositionMeans, save_centroids
    from sgpt.units.kmeans import learn_kmeans as fit
    from sgpt.units.speech_encoder import load_speech_encoder

    reporter = Reporter(TOOL, strict)
    check_output(output, inputs)
    dense = _dense_choice(encoder, checkpoint)
    items = gather_items(inputs, manifest, reporter)
    dev = resolve_device(device)
    model = load_speech_encoder(dense, None, checkpoint, layer, dev, dtype)
    period = getattr(model.dense, "position_period", None)
    if center == "positions" and period is None:
        raise click.UsageError(f"--center positions: the {dense} encoder has no absolute "
                               "positions (use auto or none)")
    period = None if center == "none" else period
    reservoir = FrameReservoir(max_frames, seed, period)
    positions = None if period is None else PositionMeans(period, model.dense.dim)
    batch_samples = int(batch_seconds * SAMPLE_RATE)
    with progress_bar(progress, len(items), "features") as advance:
        for window in windows(items, reporter, WINDOW_BATCHES * batch_samples, advance):
            for feats in model.features([wave for _, wave in window], batch_samples):
                feats = feats.cpu()
                reservoir.add(feats)
                if positions is not None:
                    positions.add(feats)
                advance()
    kept = min(reservoir.seen, max_frames)
    if kept < k:
        raise SgptError(f"only {kept} frames from {len(items)} inputs: too few for k={k}")
    means = None if positions is None else positions.means()
    frames = reservoir.frames() if means is None else reservoir.centered(means)
    reporter.info(f"k-means: k={k} over {len(frames)} of {reservoir.seen} frames")
    with progress_bar(progress, max_iter, "k-means") as advance:
        centroids, inertia = fit(frames.to(dev), k, seed=seed, max_iter=max_iter,
                                 batch_size=batch_size, progress=lambda i, _: advance())
    meta = {**model.meta, "sgpt_version": __version__, "k": k,
            "dim": int(centroids.shape[1]), "inertia": inertia,
            "frames": len(frames), "frames_seen": reservoir.seen, "seed": seed,
            "inputs": len(items), "failed": reporter.failures}
    del meta["dedup"]
    save_centroids(output, centroids.cpu().numpy(), meta,
                   None if means is None else means.numpy())
    reporter.info(f"wrote {output} (inertia {inertia:.4g})")
    return reporter.exit_code


def main():
    console_main(cli, TOOL)


if __name__ == "__main__":
    main()
