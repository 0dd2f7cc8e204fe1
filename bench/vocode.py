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

With ``--architectures``, instead: the two architectures sgpt-vocode trains, each at the
embedded default's size and at its published size (Vocos: 512 channels, 8 blocks), random
weights: training updates per second (the same batch of segments of real espeak-ng speech;
the HiFi-GAN with its discriminators and in its mel-only warm-up) and synthesis real-time
factor, side by side, as ratios to the default's HiFi-GAN.

    .venv/bin/python bench/vocode.py [--seconds 6] [--repeats 3] [--long-seconds 6] [--threads N]
    .venv/bin/python bench/vocode.py --architectures [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_threads_option, apply_threads, machine_line  # noqa: E402
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


def _trainer(arch: str, config: dict, tmp: Path, records: list[dict]):
    """A trainer of ``arch`` on ``records`` and a function doing one update."""
    import importlib

    module = importlib.import_module({"hifigan": "sgpt.vocode.hifigan_train",
                                      "vocos": "sgpt.vocode.vocos_train"}[arch])
    path = tmp / f"{arch}-{len(os.listdir(tmp))}.json"
    path.write_text(json.dumps(config))
    opts = module.TrainOptions(output=str(tmp / path.stem))
    cfg = module.training_config(opts, str(path))
    trainer = module.Trainer(cfg, opts, torch.device("cpu"), None, info=lambda m: None)
    examples = [module.make_example(r, cfg) for r in records]
    sampler = trainer.sampler(examples)
    return trainer, lambda: trainer.step(sampler, examples)


def architectures(args) -> None:
    """Training updates/s and synthesis RTF of both architectures at two sizes each."""
    from sgpt.vocode.vocos import VocosConfig

    k, batch, segment = 100, 8, 16000
    vocos = VocosConfig(num_embeddings=k).to_dict()
    vocos["dur_predictor_params"] = {"encoder_embed_dim": vocos["embedding_dim"]}
    knobs = {"batch_size": batch, "segment_size": segment}
    hifigan = published_config(num_embeddings=k, discriminator_channel_divisor=4,
                               **knobs)
    sizes = {
        "hifigan, default size (128 ch)": ("hifigan", {**hifigan,
                                                        "upsample_initial_channel": 128}),
        "hifigan, published size (512 ch)": ("hifigan", {
            **hifigan, "discriminator_channel_divisor": 1}),
        "vocos, default size (256 ch, 8 blocks)": ("vocos", {**vocos, **knobs}),
        "vocos, published size (512 ch, 8 blocks)": ("vocos", {
            **vocos, **knobs, "dim": 512, "intermediate_dim": 1536}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        records = []
        for i, text in enumerate(["the quick brown fox jumps over the lazy dog",
                                  "speech units let a language model listen and speak",
                                  "a rainbow is made of sunlight and rain"]):
            wav = tmp / f"s{i}.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
            info = sf.info(str(wav))
            frames = int(info.frames / info.samplerate * FRAME_RATE)
            records.append({"id": f"s{i}", "audio": str(wav),
                            "units": (np.arange(frames) % k).tolist(),
                            "units_meta": {"dedup": False}})
        updates, synthesis, params = {}, {}, {}
        for name, (arch, config) in sizes.items():
            trainer, step = _trainer(arch, config, tmp, records)
            params[name] = sum(p.numel() for p in trainer.generator.parameters()) / 1e6
            if arch == "hifigan":
                warm_config = {**config, "discriminator_start_step": 10 ** 9}
                updates[name.replace(",", ", mel-only,", 1)] = _trainer(
                    arch, warm_config, tmp, records)[1]
            updates[name] = step
            model = trainer.generator.eval()
            requests = [Request(f"u{i}", [x % k for x in u], [2] * len(u), False)
                        for i, u in enumerate(utterances(args.seconds))]
            synthesis[name] = (lambda v, r: lambda: v(r))(Vocoder(model, batch_size=8), requests)
            model.train()
        for fn in updates.values():
            fn()  # warm-up
        step_cpu, _ = interleaved_medians(updates, args.repeats)
        audio_s = sum(sum(r.durations) for r in requests) * 320 / 16000
        with torch.no_grad():
            for fn in synthesis.values():
                fn()
            synth_cpu, _ = interleaved_medians(synthesis, args.repeats)
    base = "hifigan, default size (128 ch)"
    print(machine_line(args.threads))
    print(f"training: batches of {batch} segments of {segment / 16000:.1f} s; synthesis: "
          f"{audio_s:.1f} s of audio in batches of 8; float32, CPU; CPU-time medians of "
          f"{args.repeats} interleaved repeats")
    print(f"{'architecture':58} {'M params':>8} {'updates/s':>10} {'vs base':>8}")
    for name, t in step_cpu.items():
        key = name.replace(", mel-only,", ",")
        print(f"{name:58} {params[key]:8.2f} {1 / t:10.2f} {step_cpu[base] / t:7.1f}x")
    print(f"{'synthesis':58} {'':8} {'RTF':>10} {'vs base':>8}")
    for name, t in synth_cpu.items():
        print(f"{name:58} {params[name]:8.2f} {t / audio_s:10.4f} {synth_cpu[base] / t:7.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="audio to vocode per timed run (about)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--long-seconds", type=float, default=6.0,
                        help="length of the utterance the chunk seams are measured on")
    parser.add_argument("--chunks", default="50,150", help="chunk sizes in frames")
    add_threads_option(parser)
    parser.add_argument("--architectures", action="store_true",
                        help="compare the HiFi-GAN and the Vocos instead (training, synthesis)")
    args = parser.parse_args()
    apply_threads(args.threads)
    torch.manual_seed(0)
    if args.architectures:
        architectures(args)
        return

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

    print(machine_line(args.threads))
    print(f"vocoder: published mHuBERT-km1000 unit HiFi-GAN config, random weights "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters), "
          "float32, CPU")
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
