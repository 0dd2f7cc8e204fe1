#!/usr/bin/env bash
# The main job: ask the embedded default model a spoken question, get a spoken answer.
#   scripts/demo.sh [OUT [QUESTION [VOICE]]]
# espeak-ng speaks QUESTION in VOICE; sgpt-units turns it into units, sgpt-generate answers (the
# transcript, a text answer and a spoken answer as units) and sgpt-vocode speaks the answer.
# No tool gets a model flag: each uses the embedded default (SGPT_DEFAULT=DIR names another
# directory of its layout). Prints three lines: the transcript, the text answer and the wav.
set -euo pipefail
out=${1:-out}
# by default a question and a voice the default never trained on: one of the recipe's held-out
# questions (examples/tiny/corpus.py's test split) in one of its held-out voices (tested)
question=${2:-What is the capital of Japan?}
voice=${3:-en-gb-scotland}
mkdir -p "$out"
echo "demo: asking \"$question\" in espeak-ng's $voice voice ($out/question.wav)" >&2
espeak-ng -v "$voice" -w "$out/question.wav" "$question"
status=0
sgpt-units "$out/question.wav" | sgpt-generate --greedy | tee "$out/answer.jsonl" \
    | sgpt-vocode --overwrite -o "$out/answers" >"$out/spoken.jsonl" || status=$?
# what the records say, even when the vocoder failed (the text answer is still there)
python3 - "$out/answer.jsonl" "$out/spoken.jsonl" <<'EOF'
import json
import sys


def first(path):
    try:
        with open(path, encoding="utf-8") as f:
            return next((json.loads(line) for line in f if line.strip()), {})
    except OSError:
        return {}


answer, spoken = first(sys.argv[1]), first(sys.argv[2])
print("transcript:", answer.get("transcript", "(none)"))
print("answer:", answer.get("text", "(none)"))
print("speech:", spoken.get("audio", "(none)"))
EOF
exit "$status"
