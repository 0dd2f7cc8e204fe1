#!/usr/bin/env python3
"""Write a small vocoder config.json for a CPU run: a unit Vocos (--arch vocos), or the
published unit HiFi-GAN layout resized (--arch hifigan).

    python3 make_config.py -k 100 --arch vocos --dim 256 --layers 8 > config.json
    python3 make_config.py -k 100 --channels 128 > config.json
"""

import argparse
import json

from sgpt.vocode.hifigan import MHUBERT_KM1000_CONFIG
from sgpt.vocode.vocos import VocosConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", type=int, required=True, help="number of units (k-means clusters)")
    ap.add_argument("--arch", choices=("hifigan", "vocos"), default="hifigan")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--segment-size", type=int, default=None,
                    help="samples per training segment (default 8960 for hifigan, 32000 "
                         "for vocos)")
    ap.add_argument("--learning-rate", type=float, default=None,
                    help="default 0.0002 for hifigan, 0.0005 for vocos")
    hifigan = ap.add_argument_group("hifigan")
    hifigan.add_argument("--channels", type=int, default=128, help="upsample_initial_channel")
    hifigan.add_argument("--disc-divisor", type=int, default=1, choices=(1, 2, 4, 8),
                         help="discriminators with 1/D of the published channels (CPU runs)")
    hifigan.add_argument("--disc-start", type=int, default=0,
                         help="updates of the generator alone (mel loss) before the "
                              "discriminators")
    vocos = ap.add_argument_group("vocos")
    vocos.add_argument("--dim", type=int, default=256, help="backbone channels")
    vocos.add_argument("--intermediate-dim", type=int, default=None,
                       help="ConvNeXt MLP width (default 3 x dim)")
    vocos.add_argument("--layers", type=int, default=8, help="ConvNeXt blocks")
    vocos.add_argument("--speakers", type=int, default=0, help="speakers (0: one voice)")
    vocos.add_argument("--duration-jitter", type=float, default=0.5,
                       help="every second update on unit runs made a frame longer or shorter "
                       "with this probability (0: off; 0.5 held up better through the "
                       "duration model: examples/vocoder/jitter_ab.sh)")
    args = ap.parse_args()
    if args.arch == "vocos":
        cfg = VocosConfig(num_embeddings=args.k, dim=args.dim, num_layers=args.layers,
                          intermediate_dim=args.intermediate_dim or 3 * args.dim,
                          num_speakers=args.speakers).to_dict()
        cfg["dur_predictor_params"] = {"encoder_embed_dim": cfg["embedding_dim"],
                                       "var_pred_hidden_dim": 128, "var_pred_kernel_size": 3,
                                       "var_pred_dropout": 0.5}
        cfg.update(batch_size=args.batch_size, segment_size=args.segment_size or 32000,
                   learning_rate=args.learning_rate or 0.0005)
        if args.duration_jitter:
            cfg["duration_jitter"] = args.duration_jitter
    else:
        cfg = dict(MHUBERT_KM1000_CONFIG)
        cfg.update(num_embeddings=args.k, upsample_initial_channel=args.channels,
                   batch_size=args.batch_size, segment_size=args.segment_size or 8960,
                   num_workers=0, discriminator_channel_divisor=args.disc_divisor,
                   learning_rate=args.learning_rate or 0.0002,
                   discriminator_start_step=args.disc_start)
    print(json.dumps(cfg, indent=2))


if __name__ == "__main__":
    main()
