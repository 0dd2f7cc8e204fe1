#!/usr/bin/env python3
"""Write a small unit HiFi-GAN config.json: the published layout, resized for a CPU run.

    python3 make_config.py -k 100 --channels 128 > config.json
"""

import argparse
import json

from sgpt.vocode.hifigan import MHUBERT_KM1000_CONFIG


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", type=int, required=True, help="number of units (k-means clusters)")
    ap.add_argument("--channels", type=int, default=128, help="upsample_initial_channel")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--segment-size", type=int, default=8960)
    ap.add_argument("--disc-divisor", type=int, default=1, choices=(1, 2, 4, 8),
                    help="discriminators with 1/D of the published channels (CPU runs)")
    ap.add_argument("--learning-rate", type=float, default=0.0002)
    ap.add_argument("--disc-start", type=int, default=0,
                    help="updates of the generator alone (mel loss) before the discriminators")
    args = ap.parse_args()
    cfg = dict(MHUBERT_KM1000_CONFIG)
    cfg.update(num_embeddings=args.k, upsample_initial_channel=args.channels,
               batch_size=args.batch_size, segment_size=args.segment_size, num_workers=0,
               discriminator_channel_divisor=args.disc_divisor,
               learning_rate=args.learning_rate, discriminator_start_step=args.disc_start)
    print(json.dumps(cfg, indent=2))


if __name__ == "__main__":
    main()
