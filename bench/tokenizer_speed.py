"""Benchmark: the fast SpeechGPT encoder against the transformers tokenizer, same strings.

Realistic SpeechInstruct records (stage 2 ASR/TTS and stage 3 chain of modality, with
utterances of 2-8 s of deduplicated units at ~40 units/s, and stage-1 lines) are encoded by
``tokenizer(strings)["input_ids"]`` and by ``SpeechTokenizer.encode_batch(strings)``; the
ids are asserted identical and records/s printed with the ratios. Cold: the fast path's
text cache is emptied at the start of each round, so every record's text is new to it (what
packing a data set once costs; its word cache stays, as the Rust tokenizer's BPE cache does
between the transformers rounds); warm: the same records again, texts cached. Times are
medians over the rounds.

    python bench/tokenizer_speed.py [--threads N]       # the test tokenizers, built here
    python bench/tokenizer_speed.py --tokenizer DIR     # an extended tokenizer of yours
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]

import argparse  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from common import add_threads_option, apply_threads, machine_line  # noqa: E402
from fakes.tokenizers import (  # noqa: E402
    llama_dir,
    random_sentence,
    smollm2_source,
)

from sgpt.lm.prompts import (  # noqa: E402
    ASR_INSTRUCTIONS,
    MODES,
    TTS_INSTRUCTIONS,
    chain_of_modality,
    cross_modal,
    units_text,
)
from sgpt.lm.tokenizer import SpeechTokenizer, extend  # noqa: E402


def records(n: int, seed: int, k: int) -> list[str]:
    rng = random.Random(seed)

    def utterance() -> list[int]:
        return [rng.randrange(k) for _ in range(int(rng.uniform(2, 8) * 40))]

    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.35:
            ex = cross_modal(rng.choice(ASR_INSTRUCTIONS), units_text(utterance()),
                             random_sentence(rng))
        elif r < 0.7:
            ex = cross_modal(rng.choice(TTS_INSTRUCTIONS), random_sentence(rng),
                             units_text(utterance()))
        elif r < 0.9:
            ex = chain_of_modality(rng.choice(MODES), random_sentence(rng),
                                   random_sentence(rng), utterance(), utterance())
        else:
            out.append(units_text(utterance()))
            continue
        out.append(ex["prefix"] + ex["plain_text"])
    return out


def median_of(rounds: int, fn, before=None) -> tuple[float, object]:
    """Median wall time of ``rounds`` calls of ``fn`` (``before`` run untimed ahead of each),
    and the last result."""
    times, result = [], None
    for _ in range(rounds):
        if before is not None:
            before()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench(name: str, tok: SpeechTokenizer, n: int, rounds: int, batch: int) -> None:
    strings = records(n, 0, tok.k)

    def reference():
        return [ids for i in range(0, n, batch)
                for ids in tok.hf(strings[i:i + batch])["input_ids"]]

    def fast():
        return [ids for i in range(0, n, batch) for ids in tok.encode_batch(strings[i:i + batch])]

    t_ref, ids_ref = median_of(rounds, reference)
    t_cold, ids_cold = median_of(rounds, fast, before=tok.clear_cache)
    t_warm, ids_warm = median_of(rounds, fast)
    assert ids_cold == ids_ref and ids_warm == ids_ref, f"{name}: the fast path's ids differ"
    tokens = sum(map(len, ids_ref))
    print(f"{name:23s} {n} records, {tokens / n:.0f} tokens each: transformers "
          f"{n / t_ref:6.0f} records/s; fast path cold {n / t_cold:6.0f} records/s "
          f"({t_ref / t_cold:.1f}x), warm {n / t_warm:6.0f} records/s "
          f"({t_ref / t_warm:.1f}x); ids identical")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", action="append", default=[],
                        help="extended tokenizer directory (repeatable); default: the "
                             "LLaMA-style and SmolLM2 test tokenizers, both spacings")
    parser.add_argument("-n", type=int, default=2000, help="records")
    parser.add_argument("--rounds", type=int, default=5, help="median of this many")
    parser.add_argument("--batch", type=int, default=256, help="records per call")
    add_threads_option(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    if args.tokenizer:
        targets = [(d, SpeechTokenizer.from_dir(d)) for d in args.tokenizer]
    else:
        tmp = Path(tempfile.mkdtemp(prefix="sgpt-bench-"))
        bases = [("llama-32000", str(llama_dir(tmp / "llama", size=32000)))]
        if smollm2_source():
            bases.append(("smollm2", smollm2_source()))
        targets = []
        for name, base in bases:
            for spacing in ("reference", "plain"):
                out = tmp / f"{name}-{spacing}"
                extend(base, str(out), 1000, spacing=spacing)
                targets.append((f"{name} ({spacing})", SpeechTokenizer.from_dir(str(out))))
    print(machine_line(args.threads))
    for name, tok in targets:
        bench(name, tok, args.n, args.rounds, args.batch)


if __name__ == "__main__":
    main()
