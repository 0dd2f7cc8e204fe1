#!/usr/bin/env python3
"""Speak the TEXT_KEY of JSONL records through espeak-ng into 16 kHz wavs; print records.

    python3 speak.py --key text --voices en-us --wav-dir out/wav sentences.jsonl > spoken.jsonl
    python3 speak.py --key question --random-voices "en-gb en-029" --per-record 2 --seed 1 \
        --wav-dir out/wav qa.jsonl > questions.jsonl

--voices: each record is spoken by each of these voices at espeak-ng's default speed and pitch.
--random-voices: each record is spoken --per-record times, by voices drawn from this list with
a speed (words/minute) and pitch drawn from --speeds / --pitches (seeded by --seed and the id).
Out: the input record with "id" = "ID-VOICE[-N]", "source_id" = ID, "audio", "text" (the
spoken text), "voice", "speed", "pitch". Existing wavs are reused, so a re-run only speaks
what is missing.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor


def speak(text: str, voice: str, speed: int, pitch: int, path: str) -> None:
    if os.path.exists(path):
        return
    part = os.path.join(os.path.dirname(path), "." + os.path.basename(path))  # same filesystem
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch),
                        "-w", raw, text], check=True)
        subprocess.run(["sox", raw, "-r", "16000", "-c", "1", "-b", "16", part], check=True)
    os.replace(part, path)


def renderings(rec: dict, args) -> list[dict]:
    out = []
    if args.voices:
        for voice in args.voices.split():
            out.append({"voice": voice, "speed": 175, "pitch": 50,
                        "id": f"{rec['id']}-{voice.replace('+', '_')}"})
    if args.random_voices:
        rng = random.Random(f"{args.seed}:{rec['id']}")
        for n in range(args.per_record):
            voice = rng.choice(args.random_voices.split())
            out.append({"voice": voice, "speed": rng.choice(args.speeds),
                        "pitch": rng.choice(args.pitches),
                        "id": f"{rec['id']}-{voice.replace('+', '_')}-{n}"})
    return [{**rec, **r, "text": rec[args.key], "source_id": rec["id"]} for r in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="+")
    ap.add_argument("--key", default="text", help="the field to speak")
    ap.add_argument("--voices", default="", help="space-separated voices: each speaks all")
    ap.add_argument("--random-voices", default="", help="space-separated voices to draw from")
    ap.add_argument("--per-record", type=int, default=1)
    ap.add_argument("--speeds", type=int, nargs="+", default=[140, 160, 175, 190])
    ap.add_argument("--pitches", type=int, nargs="+", default=[30, 40, 50, 60, 70])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--wav-dir", required=True)
    args = ap.parse_args()
    os.makedirs(args.wav_dir, exist_ok=True)
    todo = []
    for name in args.records:
        with open(name, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    for r in renderings(json.loads(line), args):
                        r["audio"] = os.path.join(args.wav_dir, r["id"] + ".wav")
                        todo.append(r)
    with ThreadPoolExecutor(args.jobs) as pool:
        for r, _ in zip(todo, pool.map(lambda r: speak(r["text"], r["voice"], r["speed"],
                                                       r["pitch"], r["audio"]), todo)):
            sys.stdout.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
