"""sgpt-units speed, side by side in one run: real-time factors and their ratios.

* one file at a time (the reference tool's loop: fairseq's HubertFeatureReader, when
  fairseq-fixed is installed, and ours) against padded batches;
* float32 against bfloat16 (AMX on this CPU), with the share of frames whose unit agrees;
* the machine's measured matmul throughput as the ceiling: the model's FLOPs per second of
  audio over the best GFLOP/s a plain matmul reaches.

The model is a full-size mHuBERT-base (12 layers, 768 dims) in the published checkpoint
layout with random weights, k-means (k=100) learnt on its own features of the corpus, so
timings and unit agreement are those of the real architecture.

    .venv/bin/python bench/units.py [--seconds 60] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_threads_option, apply_threads, machine_line  # noqa: E402
from fakes.mhubert import make_mhubert_checkpoint  # noqa: E402

from sgpt.core.audio import SAMPLE_RATE, load_audio  # noqa: E402
from sgpt.units.hubert import load_hubert  # noqa: E402
from sgpt.units.kmeans import KMeansQuantizer, learn_kmeans  # noqa: E402
from sgpt.units.speech_encoder import SpeechEncoder  # noqa: E402

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "speech units let a language model listen and speak",
    "please tell me the weather for tomorrow morning, and whether I will need an umbrella",
    "a rainbow is made of sunlight and rain",
    "she sells sea shells by the sea shore while the gulls cry overhead",
    "what is the capital of france",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb+m3"]
LAYER = 11


def corpus(directory: Path, seconds: float) -> list:
    waves, total, i = [], 0.0, 0
    while total < seconds:
        path = directory / f"c{i}.wav"
        text = SENTENCES[i % len(SENTENCES)]
        subprocess.run(["espeak-ng", "-v", VOICES[i % len(VOICES)], "-s", str(140 + 10 * (i % 5)),
                        "-w", str(path), text], check=True, capture_output=True)
        waves.append(load_audio(str(path)))
        total += len(waves[-1]) / SAMPLE_RATE
        i += 1
    return waves


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(dtype: torch.dtype, repeats: int) -> float:
    a = torch.randn(4096, 768, dtype=dtype)
    b = torch.randn(768, 3072, dtype=dtype)
    torch.mm(a, b)
    seconds = median_time(lambda: [torch.mm(a, b) for _ in range(5)], repeats) / 5
    return 2 * 4096 * 768 * 3072 / seconds / 1e9


def fairseq_loop(ckpt: str, waves: list):
    """The reference: fairseq's model, one file at a time (as dump_hubert_feature.py)."""
    try:
        from fairseq import checkpoint_utils
    except ImportError:
        return None
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # fairseq predates weights_only
    (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([ckpt])
    model.eval()

    @torch.inference_mode()
    def run():
        for wave in waves:
            model.extract_features(source=torch.from_numpy(wave)[None], padding_mask=None,
                                   mask=False, output_layer=LAYER)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio in the corpus")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-seconds", type=float, default=60.0)
    add_threads_option(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        waves = corpus(Path(tmp), args.seconds)
        audio_s = sum(len(w) for w in waves) / SAMPLE_RATE
        ckpt = make_mhubert_checkpoint(Path(tmp) / "mhubert_base.pt", encoder_layers=12,
                                       embed_dim=768, ffn_dim=3072, heads=12, conv_dim=512)
        dense = load_hubert(str(ckpt), LAYER).eval()
        dense_bf16 = load_hubert(str(ckpt), LAYER).to(torch.bfloat16).eval()
        fp32 = SpeechEncoder(dense, None, dedup=False)
        # FlopCounterMode's module hooks fail under inference_mode on parameters that
        # require grad (torch 2.13): an encoder needs no grad anyway
        dense.requires_grad_(False)
        with FlopCounterMode(display=False) as counter:
            fp32.features(waves[:1])
        flops_per_audio_s = counter.get_total_flops() / (len(waves[0]) / SAMPLE_RATE)
        reference = fairseq_loop(str(ckpt), waves)

    feats = torch.cat(fp32.features(waves))
    centroids, _ = learn_kmeans(feats, 100, seed=0, max_iter=30)
    quantizer = KMeansQuantizer(centroids)
    fp32.quantizer = quantizer
    bf16 = SpeechEncoder(dense_bf16, quantizer, dedup=False)
    max_samples = int(args.batch_seconds * SAMPLE_RATE)


    runs = {
        "ours, one at a time, fp32": lambda: fp32.features(waves),
        "ours, batched, fp32": lambda: fp32.features(waves, max_samples),
        "ours, one at a time, bf16": lambda: bf16.features(waves),
        "ours, batched, bf16": lambda: bf16.features(waves, max_samples),
    }
    if reference is not None:
        runs = {"fairseq reference, one at a time, fp32": reference, **runs}
    rtf = {}
    for name, fn in runs.items():
        fn()  # warm-up
        rtf[name] = median_time(fn, args.repeats) / audio_s

    units32 = [u for r in fp32(waves, max_samples) for u in r["units"]]
    units16 = [u for r in bf16(waves, max_samples) for u in r["units"]]
    agree = sum(a == b for a, b in zip(units32, units16)) / len(units32)
    peak = {t: matmul_gflops(t, args.repeats) for t in (torch.float32, torch.bfloat16)}

    base_name = next(iter(runs))
    print(machine_line(args.threads))
    print(f"corpus: {len(waves)} files, {audio_s:.1f} s of espeak-ng speech; "
          f"model: mHuBERT-base layout, layer {LAYER}, {flops_per_audio_s / 1e9:.1f} GFLOP "
          f"per audio second; medians of {args.repeats}")
    print(f"{'run':42} {'RTF':>8} {'x faster':>9} {'% of ceiling':>13}")
    for name, value in rtf.items():
        dtype = torch.bfloat16 if "bf16" in name else torch.float32
        ceiling = flops_per_audio_s / (peak[dtype] * 1e9)
        print(f"{name:42} {value:8.4f} {rtf[base_name] / value:9.2f} "
              f"{100 * ceiling / value:12.1f}%")
    print(f"matmul ceiling: fp32 {peak[torch.float32]:.0f} GFLOP/s, bf16 "
          f"{peak[torch.bfloat16]:.0f} GFLOP/s ({peak[torch.bfloat16] / peak[torch.float32]:.1f}x)")
    print(f"bf16 vs fp32 speed-up (batched): "
          f"{rtf['ours, batched, fp32'] / rtf['ours, batched, bf16']:.2f}x; "
          f"unit agreement bf16 vs fp32: {100 * agree:.1f}% of {len(units32)} frames")


if __name__ == "__main__":
    main()
