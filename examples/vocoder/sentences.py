#!/usr/bin/env python3
"""Print N plain English sentences, one per line, the same ones for the same --seed.

The corpus of the vocoder recipe: short, everyday sentences built from a small grammar, so
that espeak-ng can speak them and an ASR judge has a fair chance to write them back.

    python3 sentences.py -n 300 --seed 0 > sentences.txt
"""

import argparse
import random

SUBJECTS = [
    "the old man", "my sister", "a small child", "the teacher", "our neighbour", "the doctor",
    "a young woman", "the farmer", "his brother", "the driver", "her friend", "the baker",
    "a tall boy", "the captain", "my father", "the student", "a quiet girl", "the manager",
]
VERBS = [
    "opened", "painted", "carried", "found", "cleaned", "sold", "washed", "bought", "fixed",
    "dropped", "closed", "moved", "watched", "lifted", "checked", "cooked", "wrapped", "lost",
]
OBJECTS = [
    "the red door", "a heavy box", "the kitchen window", "an old bicycle", "the green car",
    "a wooden chair", "the black bag", "a letter", "the garden gate", "a blue cup", "the big map",
    "a warm coat", "the bread", "a yellow ball", "the new table", "a paper boat", "the lamp",
]
PLACES = [
    "near the river", "in the morning", "after dinner", "before the rain", "at the station",
    "on the hill", "by the lake", "in the small town", "behind the house", "at the market",
    "during the storm", "after school", "in the evening", "at the old farm", "on Sunday",
]
QUESTIONS = [
    "Where did {s} put {o}?", "Why did {s} buy {o}?", "When will {s} bring {o}?",
    "Did {s} see {o} {p}?", "Who gave {s} {o}?",
]


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        s, v, o, p = (rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS),
                      rng.choice(PLACES))
        if rng.random() < 0.2:
            line = rng.choice(QUESTIONS).format(s=s, o=o, p=p)
        else:
            line = f"{s} {v} {o} {p}."
        line = line[0].upper() + line[1:]
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for line in sentences(args.n, args.seed):
        print(line)


if __name__ == "__main__":
    main()
