"""Unit stability across voices, mfcc against whisper units (each utterance at its own length,
and padded to 30 s), side by side in one run.

espeak-ng speaks the same sentences with several voices; one voice is held out. For each
encoder, k-means (k=100, seed 0) is learnt on the other voices' audio only, then every
utterance is encoded and deduplicated, as ``sgpt-units learn-kmeans`` + ``encode`` do. Per
encoder:

* same sentence: unit edit distance between two voices' renderings of one sentence, over the
  longer sequence's length (0 = identical units, 1 = nothing in common), for pairs of seen
  voices and for pairs with the held-out voice;
* different sentences: the same distance between renderings of two different sentences (by
  any voices): the chance level, a baseline;
* same/different: the ratio of the two medians (lower is better: 1.0 means the units say no
  more about the words than about the voice);
* encoding real-time factor: seconds spent computing features and units per second of audio
  (padded batches as sgpt-units packs them; whisper-padded pads every file to 30 s).

Medians over all pairs. Distances and ratios are printed with whisper over mfcc.

    .venv/bin/python bench/unit_stability.py [--voices en-us,en-gb-x-rp+f3,...] [-k 100]
        [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_threads_option, apply_threads, machine_line  # noqa: E402

from sgpt.core.audio import SAMPLE_RATE, load_audio  # noqa: E402
from sgpt.core.stream import dedup  # noqa: E402
from sgpt.evaluate.judge import edit_distance  # noqa: E402
from sgpt.units.kmeans import KMeansQuantizer, learn_kmeans  # noqa: E402
from sgpt.units.speech_encoder import load_speech_encoder  # noqa: E402

SENTENCES = [
    "the old man opened the red door",
    "my sister carried a heavy box to the station",
    "where did the teacher put the green car",
    "please tell me the weather for tomorrow morning",
    "a small dog was sleeping under the kitchen table",
    "we walked along the river until the sun went down",
    "the children laughed at the funny clown",
    "can you bring me a glass of cold water",
    "he bought three apples and a loaf of bread",
    "the train to the city leaves at noon",
]
# the last voice is held out of k-means learning
VOICES = "en-us,en-gb-x-rp+f3,en-gb-scotland+m3,en-029+f4"


def speak(out: Path, voices: list[str]) -> dict[tuple[int, str], Path]:
    paths = {}
    for v, voice in enumerate(voices):
        for s, text in enumerate(SENTENCES):
            path = out / f"v{v}_s{s}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(150 + 10 * v), "-w", str(path),
                            text], check=True, capture_output=True)
            paths[s, voice] = path
    return paths


def distance(a: list[int], b: list[int]) -> float:
    return edit_distance(a, b) / max(len(a), len(b), 1)


def measure(encoder: str, waves: dict, train_voices: list[str], k: int, batch_seconds: float
            ) -> dict:
    model = load_speech_encoder(encoder, None, device="cpu", dtype="auto")
    keys = list(waves)
    start = time.perf_counter()
    feats = dict(zip(keys, model.features([waves[key] for key in keys],
                                          int(batch_seconds * SAMPLE_RATE))))
    feature_time = time.perf_counter() - start
    train = torch.cat([f for (_, voice), f in feats.items() if voice in train_voices])
    centroids, _ = learn_kmeans(train, k, seed=0)
    quantizer = KMeansQuantizer(centroids)
    start = time.perf_counter()
    units = {key: dedup(quantizer(f).tolist())[0] for key, f in feats.items()}
    unit_time = time.perf_counter() - start
    audio = sum(len(w) for w in waves.values()) / SAMPLE_RATE

    seen, held, different = [], [], []
    for (s1, v1), (s2, v2) in itertools.combinations(keys, 2):
        d = distance(units[s1, v1], units[s2, v2])
        if s1 != s2:
            different.append(d)
        elif v1 in train_voices and v2 in train_voices:
            seen.append(d)
        else:
            held.append(d)
    med = statistics.median
    return {"name": model.meta["encoder"], "dim": model.dense.dim,
            "seen": med(seen), "held": med(held), "different": med(different),
            "ratio_seen": med(seen) / med(different), "ratio_held": med(held) / med(different),
            "units_per_s": statistics.mean(len(u) for u in units.values()) / (audio / len(units)),
            "rtf": (feature_time + unit_time) / audio, "pairs": (len(seen), len(held),
                                                                 len(different))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voices", default=VOICES,
                        help="comma-separated espeak-ng voices; the last is held out")
    parser.add_argument("-k", type=int, default=100)
    parser.add_argument("--encoders", default="mfcc,whisper,whisper-padded")
    parser.add_argument("--batch-seconds", type=float, default=60.0)
    add_threads_option(parser, default=2)
    args = parser.parse_args()
    apply_threads(args.threads)
    voices = args.voices.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        paths = speak(Path(tmp), voices)
        waves = {key: load_audio(str(path)) for key, path in paths.items()}
    audio = sum(len(w) for w in waves.values()) / SAMPLE_RATE
    print(machine_line(args.threads))
    print(f"{len(SENTENCES)} sentences x {len(voices)} voices ({audio:.0f} s of audio); "
          f"k={args.k} learnt on {', '.join(voices[:-1])}; held out: {voices[-1]}")
    rows = [measure(e, waves, voices[:-1], args.k, args.batch_seconds)
            for e in args.encoders.split(",")]
    print("\nunit edit distance / longer length (deduplicated units), medians over pairs:")
    header = (f"{'encoder':<21}{'dim':>5}{'same, seen':>12}{'same, held':>12}{'different':>11}"
              f"{'seen/diff':>11}{'held/diff':>11}{'units/s':>9}{'RTF':>8}")
    print(header)
    for r in rows:
        print(f"{r['name']:<21}{r['dim']:>5}{r['seen']:>12.3f}{r['held']:>12.3f}"
              f"{r['different']:>11.3f}{r['ratio_seen']:>11.3f}{r['ratio_held']:>11.3f}"
              f"{r['units_per_s']:>9.1f}{r['rtf']:>8.3f}")
    for a, b in itertools.combinations(rows, 2):
        print(f"{b['name']} / {a['name']}: same-sentence distance x{b['seen'] / a['seen']:.2f} "
              f"(seen voices), x{b['held'] / a['held']:.2f} (held-out voice); "
              f"RTF x{b['rtf'] / a['rtf']:.2f}")
    print(f"pairs (same seen, same held, different): {rows[0]['pairs']}")


if __name__ == "__main__":
    main()
