#!/usr/bin/env python3
"""How well a vocoder's duration model predicts the durations of held-out units.

For each record with deduplicated units and their true durations (as sgpt-units writes
them), the vocoder's duration predictor gives frames per unit; printed: the mean absolute
error in frames per unit, the share of units predicted exactly, and the mean relative error
of each utterance's total length.

    python3 durations.py --vocoder sgpt/default/vocoder units/test.jsonl [...]

With --sets DIR it also writes, for each input NAME.jsonl, the records to vocode and judge
to tell what costs the words: DIR/NAME.true.jsonl (the units' own durations),
NAME.none.jsonl (none: the duration model's), NAME.jitter.jsonl (the own durations, each
shifted by an error drawn from the duration model's errors on that file, without regard to
context, never under one frame) and NAME.scaled.jsonl (the duration model's, rescaled to
each utterance's true length by cumulative rounding).
"""

import argparse
import json
import os

import numpy as np
import torch

from sgpt.vocode.architectures import load_vocoder


def predicted(model, units: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model.predict_durations(torch.tensor([units]),
                                       torch.tensor([len(units)]))[0].numpy()


def write_sets(path: str, records: list[dict], preds: list[np.ndarray], out: str,
               rng: np.random.Generator) -> None:
    errors = np.concatenate([p - np.array(r["durations"]) for r, p in zip(records, preds)])
    name = os.path.basename(path).removesuffix(".jsonl")
    kinds = ("true", "none", "jitter", "scaled")
    files = {k: open(os.path.join(out, f"{name}.{k}.jsonl"), "w", encoding="utf-8")
             for k in kinds}
    for rec, pred in zip(records, preds):
        true = np.array(rec["durations"])
        plain = {k: v for k, v in rec.items() if k not in ("durations", "audio")}
        ends = np.round(np.cumsum(pred) * true.sum() / pred.sum())
        durations = {
            "true": true,
            "jitter": np.maximum(1, true + rng.choice(errors, len(true))),
            "scaled": np.maximum(1, np.diff(ends, prepend=0)).astype(int)}
        for kind in kinds:
            value = {**plain, "durations": durations[kind].tolist()} if kind != "none" else plain
            files[kind].write(json.dumps(value) + "\n")
    for f in files.values():
        f.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocoder", required=True)
    ap.add_argument("--sets", metavar="DIR", help="also write the records to vocode (above)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("records", nargs="+")
    args = ap.parse_args()
    model = load_vocoder(args.vocoder)
    rng = np.random.default_rng(args.seed)
    errors, exact, totals = [], 0, []
    for path in args.records:
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        preds = [predicted(model, rec["units"]) for rec in records]
        for rec, pred in zip(records, preds):
            true = np.array(rec["durations"])
            errors.append(np.abs(pred - true))
            exact += int((pred == true).sum())
            totals.append(abs(pred.sum() - true.sum()) / true.sum())
        if args.sets:
            os.makedirs(args.sets, exist_ok=True)
            write_sets(path, records, preds, args.sets, rng)
    every = np.concatenate(errors)
    print(f"{len(totals)} utterances, {len(every)} units: mean absolute error "
          f"{every.mean():.2f} frames per unit ({exact / len(every):.0%} exact); utterance "
          f"length off by {100 * np.mean(totals):.1f}% on average")


if __name__ == "__main__":
    main()
