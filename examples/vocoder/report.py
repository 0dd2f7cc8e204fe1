#!/usr/bin/env python3
"""Print the recipe's figures: judge WER on original vs resynthesized audio, per voice.

    python3 report.py out
"""

import json
import os
import sys


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "out"
    print(f"{'set':8} {'voice':16} {'utts':>4} {'WER original':>13} {'WER resynth':>12}")
    for name in ("seen", "unseen"):
        try:
            with open(os.path.join(out, f"wer-original-{name}.json")) as f:
                orig = json.load(f)
            with open(os.path.join(out, f"wer-resynth-{name}.json")) as f:
                res = json.load(f)
        except FileNotFoundError:
            continue
        for voice, o in orig.get("groups", {}).items():
            r = res.get("groups", {}).get(voice, {})
            print(f"{name:8} {voice:16} {o['utterances']:4d} {o['wer']:13.3f} "
                  f"{r.get('wer', float('nan')):12.3f}")
        print(f"{name:8} {'all':16} {orig['utterances']:4d} {orig['wer']:13.3f} "
              f"{res['wer']:12.3f}")


if __name__ == "__main__":
    main()
