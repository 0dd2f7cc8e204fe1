#!/usr/bin/env python3
"""How well a vocoder's duration model predicts the durations of held-out units.

For each record with deduplicated units and their true durations (as sgpt-units writes
them), the vocoder's duration predictor gives frames per unit; printed: the mean absolute
error in frames per unit, the share of units predicted exactly, and the mean relative error
of each utterance's total length.

    python3 durations.py --vocoder sgpt/default/vocoder units/test.jsonl [...]
"""

import argparse
import json

import numpy as np
import torch

from sgpt.vocode.architectures import load_vocoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocoder", required=True)
    ap.add_argument("records", nargs="+")
    args = ap.parse_args()
    model = load_vocoder(args.vocoder)
    errors, exact, totals = [], 0, []
    for path in args.records:
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                units, true = rec["units"], np.array(rec["durations"])
                with torch.no_grad():
                    pred = model.predict_durations(torch.tensor([units]),
                                                   torch.tensor([len(units)]))[0].numpy()
                errors.append(np.abs(pred - true))
                exact += int((pred == true).sum())
                totals.append(abs(pred.sum() - true.sum()) / true.sum())
    every = np.concatenate(errors)
    print(f"{len(totals)} utterances, {len(every)} units: mean absolute error "
          f"{every.mean():.2f} frames per unit ({exact / len(every):.0%} exact); utterance "
          f"length off by {100 * np.mean(totals):.1f}% on average")


if __name__ == "__main__":
    main()
