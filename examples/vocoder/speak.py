#!/usr/bin/env python3
"""Speak every sentence with every voice through espeak-ng; write 16 kHz wavs and records.

    python3 speak.py --voices "en-us en-gb" --sentences sentences.txt --first 0 --count 280 \
        --wav-dir out/wav > out/train.jsonl

Each record is {"id": "VOICE-NNNN", "audio": PATH, "text": SENTENCE, "voice": VOICE}; the wav
is espeak-ng's output resampled to 16 kHz mono by sox. Existing wavs are reused.
"""

import argparse
import json
import os
import subprocess
import tempfile


def speak(text: str, voice: str, path: str) -> None:
    if os.path.exists(path):
        return
    part = os.path.join(os.path.dirname(path), "." + os.path.basename(path))  # same filesystem
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-w", raw, text], check=True)
        subprocess.run(["sox", raw, "-r", "16000", "-c", "1", "-b", "16", part], check=True)
    os.replace(part, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voices", required=True, help="space-separated espeak-ng voices")
    ap.add_argument("--sentences", required=True)
    ap.add_argument("--first", type=int, default=0, help="index of the first sentence used")
    ap.add_argument("--count", type=int, default=None, help="sentences used (default: all)")
    ap.add_argument("--wav-dir", required=True)
    args = ap.parse_args()
    with open(args.sentences, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    end = len(lines) if args.count is None else args.first + args.count
    os.makedirs(args.wav_dir, exist_ok=True)
    for voice in args.voices.split():
        for i in range(args.first, min(end, len(lines))):
            uid = f"{voice.replace('+', '_')}-{i:04d}"
            path = os.path.join(args.wav_dir, uid + ".wav")
            speak(lines[i], voice, path)
            print(json.dumps({"id": uid, "audio": path, "text": lines[i], "voice": voice}),
                  flush=True)


if __name__ == "__main__":
    main()
