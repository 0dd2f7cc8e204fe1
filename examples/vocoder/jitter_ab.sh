#!/bin/bash
# Does training on jittered durations (duration_jitter) make a vocos vocoder hold up through
# its duration model? Two arms go on from the same vocos (INIT, a sgpt-vocode train
# directory) for SECONDS_PER_ARM of wall time each, one after the other: "plain" without
# jitter, "jitter" with JITTER (0.5). Then each vocodes the held-out unit sets with their own
# durations (*.true) and with durations dropped (*.none: its duration model gives them, as
# for generated answers; durations.py --sets), judged by Whisper base.
#
#   INIT=voc TRAIN=train.jsonl TESTS="grammar-test.jsonl fortunes-test.jsonl" OUT=jab \
#       SECONDS_PER_ARM=1200 examples/vocoder/jitter_ab.sh
#
# TRAIN and TESTS are unit records with "audio" and "durations" (INIT's units). Run again to
# continue both arms.
set -e
HERE=$(cd "$(dirname "$0")" && pwd); B=${BIN:-$HERE/../../.venv/bin}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${THREADS:-2}
: "${INIT:?}" "${TRAIN:?}" "${TESTS:?}" "${OUT:?}"
mkdir -p "$OUT"
for arm in plain jitter; do
  q=0; [ $arm = jitter ] && q=${JITTER:-0.5}
  $B/python -c "import json, sys; c = json.load(open(sys.argv[1])); c['duration_jitter'] = float(sys.argv[2]); json.dump(c, open(sys.argv[3], 'w'), indent=2)" \
      "$INIT/config.json" "$q" "$OUT/config-$arm.json"
  args=(-o "$OUT/$arm"); [ -d "$OUT/$arm" ] || args=(--config "$OUT/config-$arm.json" --init "$INIT" "${args[@]}")
  timeout --signal=TERM "${SECONDS_PER_ARM:-1200}" $B/sgpt-vocode train "${args[@]}" \
      --steps 1000000 --checkpoint-interval 250 --keep 2 --device cpu --dtype auto "$TRAIN" \
      || [ $? -eq 124 ]
done
# shellcheck disable=SC2086
[ -d "$OUT/sets" ] || $B/python "$HERE/durations.py" --vocoder "$INIT" --sets "$OUT/sets" $TESTS
for arm in plain jitter; do
  mkdir -p "$OUT/$arm-res"
  for f in "$OUT"/sets/*.true.jsonl "$OUT"/sets/*.none.jsonl; do
    o=$OUT/$arm-res/$(basename "$f" .jsonl); rm -rf "$o.wav"
    $B/sgpt-vocode --vocoder "$OUT/$arm" --device cpu -o "$o.wav" "$f" > "$o.jsonl"
    $B/sgpt-evaluate judge --summary "$o.wer.json" "$o.jsonl" > /dev/null
    printf '%-8s %-30s %s\n' "$arm" "$(basename "$f" .jsonl)" "$($B/python -c "import json,sys; print(round(100 * json.load(open(sys.argv[1]))['wer'], 1))" "$o.wer.json")"
  done
done
