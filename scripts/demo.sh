#!/usr/bin/env bash
# The main job, until the embedded default model exists: speech -> units.
# espeak-ng speaks a few sentences; sgpt-units learns k-means over their weights-free MFCC
# features, then encodes a spoken question into SpeechGPT units.
set -euo pipefail
out=${1:-out}
mkdir -p "$out/speech"
sentences=(
    "the quick brown fox jumps over the lazy dog"
    "speech units let a language model listen and speak"
    "please tell me the weather for tomorrow morning"
    "a rainbow is made of sunlight and rain"
    "she sells sea shells by the sea shore"
)
voices=(en-us en-gb en-us+f3 en-gb+m3 en-us+f2)
for i in "${!sentences[@]}"; do
    espeak-ng -v "${voices[$i]}" -w "$out/speech/s$i.wav" "${sentences[$i]}"
done
sgpt-units learn-kmeans --encoder mfcc -k 50 --seed 0 -o "$out/km50.npy" "$out"/speech/*.wav
espeak-ng -w "$out/question.wav" "what is the capital of france"
sgpt-units --encoder mfcc --kmeans "$out/km50.npy" "$out/question.wav" \
    | tee "$out/question.units.jsonl"
sgpt-units --encoder mfcc --kmeans "$out/km50.npy" --format speechgpt "$out/question.wav"
