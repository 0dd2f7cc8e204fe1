#!/bin/bash
# The unit Vocos experiment of the README ("sgpt-vocode: units back to speech"): a vocoder in
# the embedded default's answer voice, on varied text, judged on held-out text beyond it.
#
#   examples/vocoder/answer_voice.sh data  OUT   # text, espeak-ng speech, Whisper units
#   examples/vocoder/answer_voice.sh train OUT   # VOC_SECONDS of training; again to resume
#   examples/vocoder/answer_voice.sh judge OUT   # resynthesis judged beside the audio
#
# data: the tiny recipe's 550 + 50 held-out sentences and N_FORTUNES + N_FORTUNES_TEST (60)
# sentences from Debian's fortunes (apt-get install fortunes), spoken by en-us (the answer voice) and the
# test sets also by en-gb-scotland (a voice never trained on); units: Whisper at the real
# length on the embedded default's centroids (sgpt/default/kmeans.npy, learnt on 30 s-padded
# features: its sidecar is rewritten to say so, since the default's LLM speaks those
# centroids' units), and the test sets also with the padded encoder (what the LLM emits).
# judge: VOCODER (default OUT/voc) on every test set with the units' durations and through
# its duration model (durations dropped), and espeak-ng's audio, by the Whisper judge;
# results/NAME/*.wer.json and a table.
set -euo pipefail
STAGE=${1:?data, train or judge}; OUT=${2:?output directory}
R=$(cd "$(dirname "$0")/../.." && pwd); B=$R/.venv/bin; PY=$B/python
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${THREADS:-2}
mkdir -p "$OUT"; cd "$OUT"
TESTS="grammar-test fortunes-test grammar-test-scotland fortunes-test-scotland"
case $STAGE in
data)
  N=${N_FORTUNES:-2500}; T=${N_FORTUNES_TEST:-60}
  mkdir -p text speech units
  [ -f text/sentences-train.jsonl ] || $PY "$R/examples/tiny/corpus.py" \
      --sentences ${N_SENTENCES:-600} --heldout ${N_HELDOUT:-50} --seed 0 -o text
  $PY "$R/examples/vocoder/sentences.py" --source fortunes -n $((N + T)) --seed 0 \
    | $PY -c "
import json, sys
lines = sys.stdin.read().splitlines()
with open('text/fortunes-train.jsonl', 'w') as f:
    for i, t in enumerate(lines[:$N]): f.write(json.dumps({'id': f'f{i:04d}', 'text': t}) + '\n')
with open('text/fortunes-test.jsonl', 'w') as f:
    for i, t in enumerate(lines[$N:]): f.write(json.dumps({'id': f'ft{i:03d}', 'text': t}) + '\n')"
  SPEAK="$PY $R/examples/tiny/speak.py --wav-dir $PWD/wav"
  $SPEAK --voices en-us text/sentences-train.jsonl > speech/grammar-train.jsonl
  $SPEAK --voices en-us text/sentences-test.jsonl > speech/grammar-test.jsonl
  $SPEAK --voices en-gb-scotland text/sentences-test.jsonl > speech/grammar-test-scotland.jsonl
  $SPEAK --voices en-us text/fortunes-train.jsonl > speech/fortunes-train.jsonl
  $SPEAK --voices en-us text/fortunes-test.jsonl > speech/fortunes-test.jsonl
  $SPEAK --voices en-gb-scotland text/fortunes-test.jsonl > speech/fortunes-test-scotland.jsonl
  cp "$R/sgpt/default/kmeans.npy" km.npy
  $PY -c "import json; m = json.load(open('$R/sgpt/default/kmeans.json')); m.update(encoder='whisper', sgpt_version='0.2.0', note='the embedded default centroids (learnt on whisper-padded features) on real-length features'); json.dump(m, open('km.json', 'w'))"
  for s in grammar-train fortunes-train $TESTS; do
    [ -f units/$s.jsonl ] || $B/sgpt-units --encoder whisper --kmeans km.npy --device cpu \
        -o units/$s.jsonl - < speech/$s.jsonl
  done
  for s in grammar-test fortunes-test; do
    [ -f units/$s.padded.jsonl ] || $B/sgpt-units --encoder whisper-padded \
        --kmeans "$R/sgpt/default/kmeans.npy" --device cpu -o units/$s.padded.jsonl - < speech/$s.jsonl
  done
  cat units/grammar-train.jsonl units/fortunes-train.jsonl > units/train.jsonl ;;
train)
  [ -f config.json ] || $PY "$R/examples/vocoder/make_config.py" -k 100 --arch vocos \
      --batch-size ${BATCH:-16} --segment-size ${SEGMENT:-32000} > config.json
  timeout --signal=INT ${VOC_SECONDS:-2400} $B/sgpt-vocode train --config config.json -o voc \
      --steps ${VOC_STEPS:-1000000} --checkpoint-interval 250 --log-interval 50 --keep 3 \
      --device cpu --dtype ${DTYPE:-auto} units/train.jsonl || [ $? -eq 130 ] ;;
judge)
  VOCODER=${VOCODER:-voc}; NAME=${NAME:-vocos}
  mkdir -p results/$NAME
  for s in $TESTS grammar-test.padded fortunes-test.padded; do
    out=results/$NAME/$s
    rm -rf $out.wav $out.nodur.wav
    $B/sgpt-vocode --vocoder $VOCODER --device cpu -o $out.wav units/$s.jsonl > $out.jsonl
    $B/sgpt-evaluate judge --summary $out.wer.json $out.jsonl > $out.judged.jsonl
    $PY -c "import json; [print(json.dumps({k: v for k, v in json.loads(l).items() if k != 'durations'})) for l in open('units/$s.jsonl')]" > $out.nodur.in.jsonl
    $B/sgpt-vocode --vocoder $VOCODER --device cpu -o $out.nodur.wav $out.nodur.in.jsonl > $out.nodur.jsonl
    $B/sgpt-evaluate judge --summary $out.nodur.wer.json $out.nodur.jsonl > $out.nodur.judged.jsonl
  done
  for s in $TESTS; do
    [ -f results/original-$s.wer.json ] || $B/sgpt-evaluate judge \
        --summary results/original-$s.wer.json speech/$s.jsonl > results/original-$s.judged.jsonl
  done
  for f in results/original-*.wer.json results/$NAME/*.wer.json; do
    printf '%-56s %s\n' "$f" "$($PY -c "import json; d = json.load(open('$f')); print(f\"{100 * d['wer']:.1f} % of {d['words']} words\")")"
  done ;;
*) echo "unknown stage $STAGE (data, train or judge)" >&2; exit 2 ;;
esac
