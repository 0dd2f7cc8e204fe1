#!/usr/bin/env python3
"""Join spoken questions with spoken answers into quadruplets for chain-of-modality data.

    python3 quadruplets.py out/units/questions.jsonl out/units/answers.jsonl > quads.jsonl
    python3 quadruplets.py --text out/text/knowledge-replay.jsonl > text-pairs.jsonl

Both inputs are sgpt-units records of speak.py's output (they carry "source_id", the QA
pair's id, and the pair's "question" / "answer_text"). Each spoken question is paired with
the answer voice's rendering of its answer: {"id", "question_text", "question_units",
"answer_text", "answer_units"}, what `sgpt-tokenize chain-of-modality` reads.
--text: records with "question" and "answer_text" and no speech (knowledge.py's) as text
pairs {"id", "question_text", "answer_text"}, for its t2t mode.
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
    ap.add_argument("answers", nargs="?")
    ap.add_argument("--text", action="store_true", help="QUESTIONS are text pairs")
    args = ap.parse_args()
    if args.text:
        for q in read(args.questions):
            print(json.dumps({"id": q["id"], "question_text": q["question"],
                              "answer_text": q["answer_text"]}))
        return
    if args.answers is None:
        ap.error("give the spoken answers' records")
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
