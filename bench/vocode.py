"""sgpt-vocode speed and chunk seams, side by side in one run.

* real-time factor (seconds of compute per second of audio) of fairseq's
  CodeHiFiGANVocoder (the reference, one utterance per call: it takes no batches with
  duration prediction) against sgpt's generator one at a time and in padded batches;
* ``--chunk``: the largest difference between chunked and whole-sequence vocoding of one
  long utterance, for a few chunk sizes, next to what chunking without context gives (the
  seams the context removes), and what chunking costs in time.

Both vocoders load the same fabricated checkpoint: the published mHuBERT-km1000 unit
HiFi-GAN config (upsample_initial_channel 512, rates 5-4-4-2-2, duration predictor) in the
published g_/config.json layout, filled with random weights scaled to speech loudness
(tests/fakes/hifigan.py), so the timings are those of the real architecture. Units are
random deduplicated units, with durations from the duration predictor (as SpeechGPT's
answers are vocoded). Runs are interleaved repeat by repeat, so that load from other
processes falls on all of them alike; medians are quoted. The time measured is the
process's CPU time with one torch thread (``--threads``): on a shared machine wall-clock
time measures the neighbours as much as the code, and more threads add spin-waiting to the
CPU time; wall-clock medians are printed beside it.

    .venv/bin/python bench/vocode.py [--seconds 6] [--repeats 3] [--long-seconds 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakes.hifigan import fabricate_vocoder, published_config  # noqa: E402

from sgpt.vocode.architectures import load_vocoder  # noqa: E402
from sgpt.vocode.vocoder import Request, Vocoder  # noqa: E402

FRAME_RATE = 50  # frames per second (320 samples at 16 kHz)
UNITS_PER_SECOND = 20  # deduplicated units: about 2.5 frames each with the fake predictor


def random_units(seconds: float, seed: int) -> list[int]:
    """Deduplicated random units (no unit repeats its predecessor)."""
    g = torch.Generator().manual_seed(seed)
    n = max(1, round(seconds * UNITS_PER_SECOND))
    units = torch.randint(0, 1000, (n,), generator=g).tolist()
    return [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]


def utterances(total: float) -> list[list[int]]:
    """Utterances of 0.5 to 2 s (varied, as answers are) adding up to ``total`` seconds."""
    lengths, i = [], 0
    while sum(lengths) < total:
        lengths.append(0.5 + (i * 0.7) % 1.5)
        i += 1
    return [random_units(s, seed=i) for i, s in enumerate(lengths)]


def fairseq_reference(directory: Path):
    try:
        from fairseq.models.text_to_speech.vocoder import CodeHiFiGANVocoder
    except ImportError:
        return None
    import json

    cfg = json.loads((directory / "config.json").read_text())
    return CodeHiFiGANVocoder(str(directory / "g_00500000"), cfg)


def interleaved_medians(runs: dict, repeats: int) -> tuple[dict, dict]:
    """Median CPU and wall seconds of each run (each has run once already: the warm-up)."""
    cpu: dict = {name: [] for name in runs}
    wall: dict = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return ({name: statistics.median(t) for name, t in cpu.items()},
            {name: statistics.median(t) for name, t in wall.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="audio to vocode per timed run (about)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--long-seconds", type=float, default=6.0,
                        help="length of the utterance the chunk seams are measured on")
    parser.add_argument("--chunks", default="50,150", help="chunk sizes in frames")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        directory = fabricate_vocoder(Path(tmp), published_config(), seed=1)
        model = load_vocoder(str(directory))
        reference = fairseq_reference(directory)

    utts = utterances(args.seconds)
    requests = [Request(f"u{i}", u, None, True) for i, u in enumerate(utts)]
    one = Vocoder(model, batch_size=1)
    batched = Vocoder(model, batch_size=args.batch_size)
    unbounded = Vocoder(model, batch_size=args.batch_size, max_padding=float("inf"))
    waves = one(requests)
    audio_s = sum(len(w) for w in waves) / model.cfg.sampling_rate

    runs = {}
    parity = None
    if reference is not None:
        def run_reference():
            with torch.no_grad():
                return [reference({"code": torch.tensor([u])}, dur_prediction=True).numpy()
                        for u in utts]
        ref_waves = run_reference()
        parity = max(np.abs(a - b).max() for a, b in zip(ref_waves, waves))
        runs["fairseq CodeHiFiGANVocoder, one at a time"] = run_reference
    runs["sgpt, one at a time"] = lambda: one(requests)
    runs[f"sgpt, batches of {args.batch_size}"] = lambda: batched(requests)
    runs[f"sgpt, batches of {args.batch_size}, padding uncapped"] = lambda: unbounded(requests)
    unbounded(requests)  # warm-up
    batch_diff = max(np.abs(a - b).max() for a, b in zip(waves, batched(requests)))
    medians, walls = interleaved_medians(runs, args.repeats)

    print(f"vocoder: published mHuBERT-km1000 unit HiFi-GAN config, random weights "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters), float32, "
          f"CPU, {torch.get_num_threads()} torch thread(s)")
    print(f"input: {len(utts)} utterances, {audio_s:.1f} s of audio (durations predicted); "
          f"medians of {args.repeats} interleaved repeats")
    base = next(iter(medians))
    print(f"{'run':48} {'CPU s':>7} {'RTF':>7} {'speed vs ' + base.split(',')[0]:>24} "
          f"{'wall s':>7}")
    for name, t in medians.items():
        print(f"{name:48} {t:7.2f} {t / audio_s:7.3f} {medians[base] / t:23.2f}x "
              f"{walls[name]:7.2f}")
    one_t, batch_t = medians["sgpt, one at a time"], medians[f"sgpt, batches of {args.batch_size}"]
    print(f"batched vs one at a time (sgpt): {one_t / batch_t:.2f}x; "
          f"max abs difference of their audio {batch_diff:.1e}")
    if parity is not None:
        print(f"sgpt vs fairseq audio: max abs difference {parity:.1e}")
    else:
        print("fairseq not importable: no reference run")

    # -- chunk seams ---------------------------------------------------------------------------
    long = [Request("long", random_units(args.long_seconds, seed=1000), None, True)]
    whole_vocoder = Vocoder(model, batch_size=args.batch_size)
    whole = whole_vocoder(long)[0]
    frames = len(whole) // model.cfg.hop
    print(f"\n--chunk: one utterance of {frames} frames ({len(whole) / 16000:.1f} s), "
          f"context {whole_vocoder.context} frames each side (the receptive field); "
          f"max abs difference against whole-sequence vocoding (full scale 1.0; one 16-bit "
          f"step is {1 / 32768:.1e})")
    chunk_runs = {"whole sequence": lambda: whole_vocoder(long)}  # warmed up above
    print(f"{'chunk':>6} {'pieces':>7} {'with context':>13} {'no context':>11}")
    for chunk in (int(c) for c in args.chunks.split(",")):
        voc = Vocoder(model, batch_size=args.batch_size, chunk=chunk)
        naive = Vocoder(model, batch_size=args.batch_size, chunk=chunk)
        naive.context = 0
        diff = np.abs(voc(long)[0] - whole).max()
        naive_diff = np.abs(naive(long)[0] - whole).max()
        print(f"{chunk:6d} {-(-frames // chunk):7d} {diff:13.1e} {naive_diff:11.1e}")
        chunk_runs[f"--chunk {chunk}"] = (lambda v: lambda: v(long))(voc)
    chunk_medians, _ = interleaved_medians(chunk_runs, args.repeats)
    whole_t = chunk_medians["whole sequence"]
    print("CPU time: " + "; ".join(f"{name} {t:.2f} s ({t / whole_t:.2f}x whole)"
                                   for name, t in chunk_medians.items()))


if __name__ == "__main__":
    main()
