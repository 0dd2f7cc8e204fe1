#!/usr/bin/env python3
"""Print N plain English sentences, one per line, the same ones for the same --seed.

Two sources: ``grammar`` (default), short everyday sentences built from a small grammar;
``fortunes``, sentences cut from the quotations of Debian's ``fortunes`` package (varied
words, names and rhythms a vocoder that only heard a grammar never met), kept when they are
6 to 24 words of plain letters and punctuation. Either way espeak-ng can speak them and an
ASR judge has a fair chance to write them back.

    python3 sentences.py -n 300 --seed 0 > sentences.txt
    python3 sentences.py --source fortunes -n 3000 --seed 0 > varied.txt
    python3 sentences.py --source fortunes -n 500 --max-words 12 --jsonl v > varied.jsonl

--jsonl PREFIX prints records {"id": PREFIX + number, "text"} instead of lines.
"""

import argparse
import json
import os
import random
import re
import sys

FORTUNES = "/usr/share/games/fortunes"
# the quotation files of everyday language (not the jokes about groups of people, not code,
# not ASCII art)
FORTUNE_FILES = ("education", "food", "fortunes", "humorists", "literature", "love",
                 "medicine", "miscellaneous", "people", "pets", "platitudes", "science",
                 "sports", "wisdom", "work")
_PLAIN = re.compile(r"^[A-Z][A-Za-z ,;:'-]*[a-z][.?!]$")

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


def fortune_sentences(n: int, seed: int, directory: str = FORTUNES,
                      max_words: int = 24) -> list[str]:
    """N distinct plain sentences from the fortunes files, drawn in a seeded order."""
    found: set[str] = set()
    for name in FORTUNE_FILES:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            quotes = f.read().split("\n%\n")
        for quote in quotes:
            text = " ".join(line.strip() for line in quote.splitlines()
                            if not line.strip().startswith("--"))
            for sentence in re.split(r"(?<=[.?!])\s+", text.replace("  ", " ")):
                sentence = sentence.strip()
                if _PLAIN.match(sentence) and 6 <= len(sentence.split()) <= max_words:
                    found.add(sentence)
    if not found:
        sys.exit(f"no sentences in {directory}: install Debian's fortunes package")
    pool = sorted(found)
    random.Random(seed).shuffle(pool)
    if n > len(pool):
        sys.exit(f"{directory} has {len(pool)} plain sentences, fewer than {n}")
    return pool[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", choices=("grammar", "fortunes"), default="grammar")
    ap.add_argument("--max-words", type=int, default=24,
                    help="fortunes: the longest sentence kept, in words (at least 6)")
    ap.add_argument("--jsonl", metavar="PREFIX", help="print JSONL records, ids PREFIX0000...")
    args = ap.parse_args()
    if args.source == "fortunes":
        lines = fortune_sentences(args.n, args.seed, max_words=args.max_words)
    else:
        lines = sentences(args.n, args.seed)
    for i, line in enumerate(lines):
        print(json.dumps({"id": f"{args.jsonl}{i:04d}", "text": line}) if args.jsonl else line)


if __name__ == "__main__":
    main()
