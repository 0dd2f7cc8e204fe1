#!/usr/bin/env python3
"""Write the tiny recipe's text corpus: sentences and spoken-QA pairs, split into train/test.

    python3 corpus.py --sentences 600 --heldout 50 --seed 0 -o out/text

Writes, as JSONL (the same files for the same arguments):
  sentences-train.jsonl, sentences-test.jsonl   {"id", "text"}
  qa-train.jsonl, qa-test.jsonl                 {"id", "question", "answer", "answer_text"}

Sentences come from a small grammar (short everyday sentences espeak-ng speaks clearly); held-out
ones are never trained on. QA pairs are facts of nine kinds (colours, opposites, days, months,
sums, capitals, plurals, languages, shapes): "answer" is the short reference the evaluation
looks for, "answer_text" the sentence the model learns to say. Every fifth pair of each kind
is held out (26 pairs), so the test questions are new facts of familiar kinds: facts the base
model knows (its greedy answer holds the key: tests/test_knowledge.py) and the corpus never
teaches.
"""

import argparse
import json
import os
import random

SUBJECTS = ["the old man", "my sister", "a small child", "the teacher", "our neighbour",
            "the doctor", "a young woman", "the farmer", "his brother", "the driver",
            "her friend", "the baker", "my father", "the student", "the captain"]
VERBS = ["opened", "painted", "carried", "found", "cleaned", "sold", "washed", "bought",
         "fixed", "dropped", "closed", "moved", "watched", "lifted", "cooked", "lost"]
OBJECTS = ["the red door", "a heavy box", "the kitchen window", "an old bicycle",
           "the green car", "a wooden chair", "the black bag", "a letter", "the garden gate",
           "a blue cup", "the big map", "a warm coat", "the bread", "a yellow ball",
           "the new table", "the lamp"]
PLACES = ["near the river", "in the morning", "after dinner", "before the rain",
          "at the station", "on the hill", "by the lake", "behind the house",
          "at the market", "after school", "in the evening", "on Sunday"]

# QA facts, kind by kind, ordered so that the held-out ones (index 4, 9, ...) are facts
# SmolLM2-135M-Instruct answers right (`python3 knowledge.py --bank out/text/qa-test.jsonl -o
# FILE` shows its answers). No question here is in knowledge.jsonl, nor any held-out fact.
COLOURS = [("the sky", "blue"), ("grass", "green"), ("coal", "black"), ("a banana", "yellow"),
           ("snow", "white"), ("milk", "white"), ("a lemon", "yellow"), ("a tomato", "red"),
           ("the sea", "blue"), ("blood", "red"), ("a leaf", "green"),
           ("chocolate", "brown"), ("a strawberry", "red"), ("the night sky", "black"),
           ("a raven", "black")]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"),
             ("happy", "sad"), ("old", "young"), ("day", "night"), ("open", "closed"),
             ("light", "dark"), ("left", "right"), ("rich", "poor"), ("early", "late"),
             ("wet", "dry"), ("hard", "soft"), ("full", "empty"), ("tall", "short"),
             ("thick", "thin"), ("near", "far"), ("push", "pull"), ("clean", "dirty"),
             ("strong", "weak"), ("top", "bottom"), ("front", "back"), ("king", "queen"),
             ("over", "under")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
           "ten"]
SUMS = [(1, 1), (1, 2), (2, 2), (1, 3), (5, 5), (2, 3), (1, 4), (3, 3), (2, 4)]
CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"),
            ("Spain", "Madrid"), ("Japan", "Tokyo"), ("England", "London"),
            ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"),
            ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Norway", "Oslo"),
            ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Canada", "Ottawa"),
            ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"),
            ("Croatia", "Zagreb"), ("Iraq", "Baghdad"), ("Estonia", "Tallinn"),
            ("Latvia", "Riga"), ("Morocco", "Rabat"), ("Nigeria", "Abuja"),
            ("Malaysia", "Kuala Lumpur")]
PLURALS = [("cat", "cats"), ("dog", "dogs"), ("box", "boxes"), ("baby", "babies"),
           ("mouse", "mice"), ("book", "books"), ("bus", "buses"), ("city", "cities"),
           ("goose", "geese"), ("child", "children"), ("knife", "knives"),
           ("potato", "potatoes"), ("ox", "oxen"), ("house", "houses"), ("foot", "feet"),
           ("leaf", "leaves"), ("wife", "wives"), ("church", "churches"),
           ("glass", "glasses"), ("tooth", "teeth")]
LANGUAGES = [("Spain", "Spanish"), ("England", "English"), ("Sweden", "Swedish"),
             ("Denmark", "Danish"), ("Poland", "Polish"), ("Norway", "Norwegian"),
             ("Finland", "Finnish"), ("Egypt", "Arabic"), ("Israel", "Hebrew"),
             ("Turkey", "Turkish"), ("Argentina", "Spanish"), ("Australia", "English"),
             ("Austria", "German"), ("Ukraine", "Ukrainian"), ("the Netherlands", "Dutch"),
             ("Thailand", "Thai"), ("Hungary", "Hungarian"), ("Iran", "Persian"),
             ("Vietnam", "Vietnamese"), ("Korea", "Korean")]
SHAPES = [("square", "four"), ("rectangle", "four"), ("pentagon", "five"),
          ("octagon", "eight"), ("triangle", "three"), ("hexagon", "six"),
          ("decagon", "ten"), ("heptagon", "seven")]


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        line = (f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
                f"{rng.choice(PLACES)}.")
        line = line[0].upper() + line[1:]
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def qa_pairs() -> dict[str, list[tuple[str, str, str]]]:
    """Kind -> [(question, short answer, answer sentence)], in a fixed order."""
    def after(kind: str, names: list[str], start: int) -> list[tuple[str, str, str]]:
        """What comes after each of ``names`` (cyclic), asked from ``names[start]`` on."""
        n = len(names)
        return [(f"What {kind} comes after {names[i % n]}?", names[(i + 1) % n],
                 f"After {names[i % n]} comes {names[(i + 1) % n]}.")
                for i in range(start, start + n)]

    return {
        "colour": [(f"What colour is {x}?", c, f"{x[0].upper() + x[1:]} is {c}.")
                   for x, c in COLOURS],
        "opposite": [(f"What is the opposite of {a}?", b, f"The opposite of {a} is {b}.")
                     for a, b in OPPOSITES],
        "day": after("day", DAYS, 6),
        "month": after("month", MONTHS, 2),
        "sum": [(f"What is {NUMBERS[a]} plus {NUMBERS[b]}?", NUMBERS[a + b],
                 f"{NUMBERS[a].capitalize()} plus {NUMBERS[b]} is {NUMBERS[a + b]}.")
                for a, b in SUMS],
        "capital": [(f"What is the capital of {c}?", city, f"The capital of {c} is {city}.")
                    for c, city in CAPITALS],
        "plural": [(f"What is the plural of {a}?", b, f"The plural of {a} is {b}.")
                   for a, b in PLURALS],
        "language": [(f"What language do people speak in {c}?", lang,
                      f"People in {c} speak {lang}.") for c, lang in LANGUAGES],
        "shape": [(f"How many sides does a {x} have?", n, f"A {x} has {n} sides.")
                  for x, n in SHAPES],
    }


def write_jsonl(path: str, records: list[dict]) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(path + ".tmp", path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=600, help="sentences in all")
    ap.add_argument("--heldout", type=int, default=50, help="of which held out for testing")
    ap.add_argument("--qa-every", type=int, default=5,
                    help="hold out every Nth QA pair of each kind (the demo's question, "
                         "the capital of France, is always trained on)")
    ap.add_argument("--qa-per-kind", type=int, default=0,
                    help="use only the first N pairs of each kind (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", required=True, help="directory")
    args = ap.parse_args()
    if not 0 < args.heldout < args.sentences:
        ap.error("--heldout must be between 0 and --sentences")
    os.makedirs(args.output, exist_ok=True)
    lines = sentences(args.sentences, args.seed)
    n_train = args.sentences - args.heldout
    write_jsonl(os.path.join(args.output, "sentences-train.jsonl"),
                [{"id": f"s{i:04d}", "text": t} for i, t in enumerate(lines[:n_train])])
    write_jsonl(os.path.join(args.output, "sentences-test.jsonl"),
                [{"id": f"s{i:04d}", "text": t} for i, t in enumerate(lines) if i >= n_train])
    train, test = [], []
    for kind, pairs in qa_pairs().items():
        for i, (question, answer, answer_text) in enumerate(pairs[:args.qa_per_kind or None]):
            rec = {"id": f"{kind}{i:02d}", "question": question, "answer": answer,
                   "answer_text": answer_text}
            (test if i % args.qa_every == args.qa_every - 1 else train).append(rec)
    write_jsonl(os.path.join(args.output, "qa-train.jsonl"), train)
    write_jsonl(os.path.join(args.output, "qa-test.jsonl"), test)


if __name__ == "__main__":
    main()
