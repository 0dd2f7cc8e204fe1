#!/usr/bin/env python3
"""Copy a k-means .npy (its sidecar, its position means) for sgpt-units --encoder whisper.

    python3 reuse_kmeans.py ../../sgpt/default/kmeans.npy out/km.npy

Centroids learnt on whisper-padded features (every window padded to 30 s, as sgpt 0.1 did)
are relabelled for the real-length features (`whisper`), with a note saying so: a run that
continues a model trained on them keeps its unit inventory (92.6 % of the units agree
between the two encoders; README, issue 19). A sidecar naming any other encoder is copied
as it is, for sgpt-units to check.
"""

import argparse
import json
import shutil
from pathlib import Path

from sgpt.units.kmeans import positions_path, read_sidecar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("dest")
    args = ap.parse_args()
    src, dest = Path(args.source), Path(args.dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    meta = read_sidecar(src)
    if meta is not None:
        learnt = str(meta.get("encoder", "")).split(":")[0]
        if learnt == "whisper" and "sgpt_version" not in meta:  # sgpt 0.1: padded
            learnt = "whisper-padded"
        if learnt == "whisper-padded":
            meta.update(encoder="whisper", sgpt_version=meta.get("sgpt_version", "0.2.0"),
                        learnt_on="whisper-padded",
                        note="centroids learnt on whisper-padded features, used on "
                             "real-length ones")
        dest.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
        if meta.get("center"):
            shutil.copyfile(positions_path(src), positions_path(dest))
    shutil.copyfile(src, dest)


if __name__ == "__main__":
    main()
