#!/usr/bin/env python3
"""Join spoken questions with spoken answers into quadruplets for chain-of-modality data.

    python3 quadruplets.py out/units/questions.jsonl out/units/answers.jsonl > quads.jsonl

Both inputs are sgpt-units records of speak.py's output (they carry "source_id", the QA
pair's id, and the pair's "question" / "answer_text"). Each spoken question is paired with
the answer voice's rendering of its answer: {"id", "question_text", "question_units",
"answer_text", "answer_units"}, what `sgpt-tokenize chain-of-modality` reads.
"""

import argparse
import json
import sys


def read(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("questions")
    ap.add_argument("answers")
    args = ap.parse_args()
    answers = {r["source_id"]: r for r in read(args.answers)}
    missing = 0
    for q in read(args.questions):
        a = answers.get(q["source_id"])
        if a is None:
            missing += 1
            continue
        print(json.dumps({"id": q["id"], "question_text": q["question"],
                          "question_units": q["units"], "answer_text": a["answer_text"],
                          "answer_units": a["units"]}))
    if missing:
        sys.exit(f"quadruplets.py: {missing} questions have no spoken answer in {args.answers}")


if __name__ == "__main__":
    main()
