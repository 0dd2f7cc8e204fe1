#!/bin/bash
# Which units carry more speech? The same vocos budget on two unit sets of the same audio:
# k-means (k=100, seed 0) on raw whisper features (--center none) against features centred on
# their position's mean (--center positions), then resynthesis of held-out sets with the units'
# own durations, judged by Whisper base beside the original audio.
#
#   KMEANS_SPEECH=kmeans.jsonl TRAIN_SPEECH=train.jsonl TESTS="a.jsonl b.jsonl" \
#       OUT=ab SECONDS_PER_ARM=1500 examples/vocoder/units_ab.sh
#
# Speech files are JSON records with "audio" (sgpt-units' input). Each arm trains for
# SECONDS_PER_ARM of wall time (run again to continue both); the vocoder is the vocos of
# make_config.py (dim 256, 8 ConvNeXt layers), batch 16 of 2 s segments, --dtype auto.
set -e
HERE=$(cd "$(dirname "$0")" && pwd); B=${BIN:-$HERE/../../.venv/bin}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${THREADS:-2}
: "${KMEANS_SPEECH:?}" "${TRAIN_SPEECH:?}" "${TESTS:?}" "${OUT:?}"
for c in ${ARMS:-none positions}; do
  d=$OUT/$c; mkdir -p "$d/res"
  [ -f "$d/km.npy" ] || $B/sgpt-units learn-kmeans --encoder whisper -k 100 --seed 0 \
      --center "$c" -o "$d/km.npy" - < "$KMEANS_SPEECH"
  for s in "$TRAIN_SPEECH" $TESTS; do
    [ -f "$d/$(basename "$s")" ] || $B/sgpt-units --encoder whisper --kmeans "$d/km.npy" \
        -o "$d/$(basename "$s")" - < "$s"
  done
  [ -f "$d/config.json" ] || $B/python "$HERE/make_config.py" -k 100 --arch vocos \
      --batch-size 16 --segment-size 32000 --duration-jitter 0 > "$d/config.json"
  args=(-o "$d/voc"); [ -d "$d/voc" ] || args=(--config "$d/config.json" "${args[@]}")
  timeout --signal=TERM "${SECONDS_PER_ARM:-1500}" $B/sgpt-vocode train "${args[@]}" \
      --steps 1000000 --checkpoint-interval 250 --keep 2 --device cpu --dtype auto \
      "$d/$(basename "$TRAIN_SPEECH")" || [ $? -eq 124 ]
done
for s in $TESTS; do
  name=$(basename "$s" .jsonl)
  [ -f "$OUT/original-$name.wer.json" ] || $B/sgpt-evaluate judge \
      --summary "$OUT/original-$name.wer.json" "$s" > /dev/null
  for c in ${ARMS:-none positions}; do
    out=$OUT/$c/res/$name; rm -rf "$out.wav"
    $B/sgpt-vocode --vocoder "$OUT/$c/voc" --device cpu -o "$out.wav" "$OUT/$c/$name.jsonl" \
        > "$out.jsonl"
    $B/sgpt-evaluate judge --summary "$out.wer.json" "$out.jsonl" > /dev/null
  done
done
for f in "$OUT"/original-*.wer.json "$OUT"/*/res/*.wer.json; do
  printf '%-50s %s\n' "${f#"$OUT"/}" "$($B/python -c "import json,sys; print(round(100 * json.load(open(sys.argv[1]))['wer'], 1))" "$f")"
done
