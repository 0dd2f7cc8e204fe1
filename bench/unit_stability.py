"""Unit stability across voices, mfcc against whisper units (each utterance at its own length,
centred on its corpus's mean feature at each position or not, and padded to 30 s), side by side
in one run.

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
* position information: the mutual information, in bits, between a frame's unit (before
  deduplication) and its place in the utterance (in 0.2 s steps), over all utterances: what
  the unit says about when rather than what (silence at both ends gives any encoder some);
* log-mel explained: the share of the held-out voice's log-mel variance (80 bins at the
  units' frame rate) that the mean log-mel of each unit, learnt on the seen voices' frames,
  explains (0 = the unit says nothing about the spectrum; a vocoder must find the rest in
  the context);
* encoding real-time factor: seconds spent computing features and units per second of audio
  (padded batches as sgpt-units packs them; whisper-padded pads every file to 30 s).

``ENCODER:centered`` learns and applies the k-means on features centred by position
(``sgpt-units learn-kmeans --center positions``; the position means from the k-means voices).

Medians over all pairs. Distances and ratios are printed with whisper over mfcc.

    .venv/bin/python bench/unit_stability.py [--voices en-us,en-gb-x-rp+f3,...] [-k 100]
        [--text sentences.txt]
        [--encoders mfcc,whisper,whisper:centered,whisper-padded] [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_threads_option, apply_threads, machine_line  # noqa: E402

from sgpt.core.audio import SAMPLE_RATE, load_audio  # noqa: E402
from sgpt.core.stream import dedup  # noqa: E402
from sgpt.evaluate.judge import edit_distance  # noqa: E402
from sgpt.units.kmeans import (  # noqa: E402
    KMeansQuantizer,
    PositionMeans,
    center_positions,
    learn_kmeans,
)
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


def speak(out: Path, voices: list[str], sentences: list[str]) -> dict[tuple[int, str], Path]:
    paths = {}
    for v, voice in enumerate(voices):
        for s, text in enumerate(sentences):
            path = out / f"v{v}_s{s}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(150 + 10 * v), "-w", str(path),
                            text], check=True, capture_output=True)
            paths[s, voice] = path
    return paths


def distance(a: list[int], b: list[int]) -> float:
    return edit_distance(a, b) / max(len(a), len(b), 1)


def position_information(frames: list[list[int]], step: int) -> float:
    """Mutual information (bits) between a frame's unit and its index // ``step``."""
    def entropy(counts) -> float:
        n = sum(counts.values())
        return -sum(c / n * math.log2(c / n) for c in counts.values())

    units, by_place = Counter(), {}
    for seq in frames:
        for t, u in enumerate(seq):
            units[u] += 1
            by_place.setdefault(t // step, Counter())[u] += 1
    n = sum(units.values())
    return entropy(units) - sum(sum(c.values()) / n * entropy(c) for c in by_place.values())


def log_mel(wave, frames: int) -> torch.Tensor:
    """[frames, 80] Whisper log-mel of ``wave``, pairs of its 100/s frames averaged to 50/s."""
    from faster_whisper.feature_extractor import FeatureExtractor

    mel = torch.from_numpy(FeatureExtractor(feature_size=80)(wave)[:, : 2 * frames])
    mel = torch.nn.functional.pad(mel, (0, 2 * frames - mel.shape[1]), mode="replicate")
    return mel.reshape(80, frames, 2).mean(2).T


def mel_explained(frames: dict, mels: dict, train_voices: list[str], k: int) -> float:
    """Share of the held-out voice's log-mel variance explained by each unit's mean log-mel
    over the seen voices' frames."""
    sums, counts = torch.zeros(k, 80, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    for key, units in frames.items():
        if key[1] in train_voices:
            sums.index_add_(0, torch.tensor(units), mels[key].double())
            counts.index_add_(0, torch.tensor(units), torch.ones(len(units), dtype=torch.float64))
    means = sums / counts.clamp_min(1)[:, None]
    held = [key for key in frames if key[1] not in train_voices]
    mel = torch.cat([mels[key] for key in held]).double()
    residual = torch.cat([mels[key].double() - means[torch.tensor(frames[key])]
                          for key in held])
    return float(1 - residual.square().sum() / (mel - mel.mean(0)).square().sum())


def measure(name: str, waves: dict, train_voices: list[str], k: int, batch_seconds: float
            ) -> dict:
    encoder, _, variant = name.partition(":")
    model = load_speech_encoder(encoder, None, device="cpu", dtype="auto")
    keys = list(waves)
    start = time.perf_counter()
    feats = dict(zip(keys, model.features([waves[key] for key in keys],
                                          int(batch_seconds * SAMPLE_RATE))))
    feature_time = time.perf_counter() - start
    train = [f for (_, voice), f in feats.items() if voice in train_voices]
    means = None
    if variant == "centered":
        positions = PositionMeans(model.dense.position_period, model.dense.dim)
        for f in train:
            positions.add(f)
        means = positions.means()
        train = [center_positions(f, means) for f in train]
    centroids, _ = learn_kmeans(torch.cat(train), k, seed=0)
    quantizer = KMeansQuantizer(centroids, means)
    start = time.perf_counter()
    frames = {key: quantizer(f).tolist() for key, f in feats.items()}
    units = {key: dedup(f)[0] for key, f in frames.items()}
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
    step = round(model.dense.frame_rate / 5)
    mels = {key: log_mel(waves[key], len(f)) for key, f in frames.items()}
    return {"name": model.meta["encoder"] + (f" {variant}" if variant else ""),
            "dim": model.dense.dim, "position": position_information(list(frames.values()), step),
            "mel": mel_explained(frames, mels, train_voices, k),
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
    parser.add_argument("--text", type=Path,
                        help="sentences, one per line (default: ten built-in ones); e.g. "
                             "examples/vocoder/sentences.py --source fortunes -n 50")
    parser.add_argument("--encoders", default="mfcc,whisper,whisper:centered,whisper-padded")
    parser.add_argument("--batch-seconds", type=float, default=60.0)
    add_threads_option(parser, default=2)
    args = parser.parse_args()
    apply_threads(args.threads)
    voices = args.voices.split(",")
    sentences = (args.text.read_text(encoding="utf-8").splitlines() if args.text
                 else SENTENCES)
    with tempfile.TemporaryDirectory() as tmp:
        paths = speak(Path(tmp), voices, sentences)
        waves = {key: load_audio(str(path)) for key, path in paths.items()}
    audio = sum(len(w) for w in waves.values()) / SAMPLE_RATE
    print(machine_line(args.threads))
    print(f"{len(sentences)} sentences x {len(voices)} voices ({audio:.0f} s of audio); "
          f"k={args.k} learnt on {', '.join(voices[:-1])}; held out: {voices[-1]}")
    rows = [measure(e, waves, voices[:-1], args.k, args.batch_seconds)
            for e in args.encoders.split(",")]
    print("\nunit edit distance / longer length (deduplicated units), medians over pairs; "
          "position: bits a frame's unit shares with its place (0.2 s steps); mel: share of the "
          "held-out voice's log-mel variance its units' means explain:")
    header = (f"{'encoder':<21}{'dim':>5}{'same, seen':>12}{'same, held':>12}{'different':>11}"
              f"{'seen/diff':>11}{'held/diff':>11}{'position':>10}{'mel':>6}{'units/s':>9}"
              f"{'RTF':>8}")
    print(header)
    for r in rows:
        print(f"{r['name']:<21}{r['dim']:>5}{r['seen']:>12.3f}{r['held']:>12.3f}"
              f"{r['different']:>11.3f}{r['ratio_seen']:>11.3f}{r['ratio_held']:>11.3f}"
              f"{r['position']:>10.2f}{r['mel']:>6.3f}{r['units_per_s']:>9.1f}{r['rtf']:>8.3f}")
    for a, b in itertools.combinations(rows, 2):
        print(f"{b['name']} / {a['name']}: same-sentence distance x{b['seen'] / a['seen']:.2f} "
              f"(seen voices), x{b['held'] / a['held']:.2f} (held-out voice); "
              f"RTF x{b['rtf'] / a['rtf']:.2f}")
    print(f"pairs (same seen, same held, different): {rows[0]['pairs']}")


if __name__ == "__main__":
    main()
