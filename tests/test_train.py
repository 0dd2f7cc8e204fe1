"""sgpt-train: a tiny LLaMA through the three stages on real espeak-ng speech units, resume
after kill -9, two processes under torchrun, and bad input refused before anything is
written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import SENTENCES, run_tool, speak, tool
from fakes.tokenizers import extended
from test_llm import logits, tiny_llama_dir

from sgpt.core.files import read_yaml_mapping
from sgpt.lm.models import MODEL_META, embeddings_tied, load_model_dir, vocab_rows
from sgpt.tokenize.instruct import chain_of_modality_examples, cross_modal_examples
from sgpt.tokenize.pack import Inputs, PackConfig, Packer
from sgpt.train.data import collate
from sgpt.train.recipe import Run as TrainRun
from sgpt.train.recipe import SettingsError, TrainConfig, TrainError, make_config

ROOT = Path(__file__).resolve().parents[1]
MORE = SENTENCES + [
    "what is the capital of france", "paris is the capital of france",
    "how many legs does a spider have", "a spider has eight legs",
    "which planet is the largest", "jupiter is the largest planet",
]
K = 1000
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    """Real speech: espeak-ng sentences -> MFCC -> k-means (k=40) -> deduplicated units."""
    from sgpt.core.audio import load_audio
    from sgpt.units.kmeans import KMeansQuantizer, learn_kmeans
    from sgpt.units.mfcc import MfccEncoder
    from sgpt.units.speech_encoder import SpeechEncoder

    d = tmp_path_factory.mktemp("speech")
    waves = [load_audio(str(speak(s, d / f"{i}.wav", voice=["en-us", "en-gb"][i % 2])))
             for i, s in enumerate(MORE)]
    dense = MfccEncoder()
    encoder = SpeechEncoder(dense)
    feats = torch.cat(encoder.features(waves))
    centroids, _ = learn_kmeans(feats, 40, seed=0, max_iter=20)
    encoder = SpeechEncoder(dense, KMeansQuantizer(centroids))
    return {s: r["units"] for s, r in zip(MORE, encoder(waves))}


def pack(tok_dir, records, out, stage="auto", **settings) -> Path:
    from sgpt.lm.tokenizer import SpeechTokenizer

    src = Path(str(out) + ".jsonl")
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = Inputs([str(src)])
    Packer(SpeechTokenizer.from_dir(str(tok_dir)), str(out), PackConfig(stage=stage, **settings),
           (0, 1), lambda w, r: None).run(data, range(data.count()))
    data.close()
    return out


@pytest.fixture(scope="module")
def data(units, tmp_path_factory):
    """Packed data of the three stages, and a base model whose tokenizer is LLaMA-style."""
    d = tmp_path_factory.mktemp("data")
    tok = extended("llama", "reference", K)
    s1 = [{"id": f"u{i}", "units": u} for i, u in enumerate(units.values())]
    s2 = []
    for i, (text, u) in enumerate(units.items()):
        s2 += cross_modal_examples({"id": f"u{i}", "units": u, "text": text}, K, seed=i)
    s3 = []
    pairs = list(units.items())
    for i in range(0, len(pairs) - 1, 2):
        (q, qu), (a, au) = pairs[i], pairs[i + 1]
        s3 += chain_of_modality_examples({"id": f"q{i}", "question_text": q, "answer_text": a,
                                          "question_units": qu, "answer_units": au}, K)
    return {"tok": tok, "base": tiny_llama_dir(d / "base"),
            "1": pack(tok, s1 * 4, d / "s1", block_size=48),
            "2": pack(tok, s2, d / "s2"),
            "3": pack(tok, s3, d / "s3"),  # auto: instruction data, told apart by [ta]
            "3x": pack(tok, s3, d / "s3x", stage="3")}


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train(**settings) -> dict:
    config = make_config({}, {"log_every": 1, "eval_every": 1000, "save_every": 1000,
                              "warmup_ratio": 0.0, **settings})
    return TrainRun(config, log=lambda m: None).train()


def test_three_stages_loss_falls_and_the_adapter_loads_on_stage_2(data, tmp_path):
    s1, s2, s3 = tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"
    train(stage="pretrain", model=str(data["base"]), data=[str(data["1"])], output=str(s1),
          batch_size=4, epochs=4, lr=3e-3, eval_fraction=0.1)
    train(stage="cross-modal", model=str(s1), data=[str(data["2"])], output=str(s2),
          batch_size=4, epochs=4, lr=3e-3, eval_fraction=0.1)
    train(stage="chain-of-modality", model=str(s2), data=[str(data["3"])], output=str(s3),
          batch_size=2, epochs=5, lr=3e-2, eval_fraction=0.0, lora_dropout=0.0)
    for out, drop in ((s1, 0.85), (s2, 0.85), (s3, 0.95)):
        m = [r for r in metrics(out) if "loss" in r]
        epoch = [r["loss"] for r in m if r["epoch"] <= 1]  # the first pass against the last
        first, last = np.mean(epoch), np.mean([r["loss"] for r in m[-len(epoch):]])
        assert last < drop * first, (out.name, first, last)
        assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in m)
    assert any("eval_loss" in r for r in metrics(s1))
    meta = json.loads((s3 / MODEL_META).read_text())
    assert meta["adapter"] and meta["base_model"] == str(s2)
    assert meta["stage"] == "chain-of-modality"
    assert {"adapter_config.json", "adapter_model.safetensors", "train_config.yaml",
            "sgpt_tokenizer.json"} <= {p.name for p in s3.iterdir()}
    assert not (s3 / "checkpoint").exists()
    saved = read_yaml_mapping(str(s3 / "train_config.yaml"))
    assert saved["method"] == "lora" and saved["lora_target"] == ["q_proj", "v_proj"]
    stage2, _ = load_model_dir(str(s2))
    stage3, _ = load_model_dir(str(s3))
    assert vocab_rows(stage2) == vocab_rows(stage3) == 2000 + K + 6
    ids = [1, 2000, 2005, 3001]
    assert not torch.allclose(logits(stage2, ids), logits(stage3, ids), atol=1e-4)


def test_gradient_checkpointing_same_weights_and_quiet(data, tmp_path):
    """The example configs turn it on: same weights as without, and no transformers
    deprecation warning per run on the user's stderr."""
    import warnings

    from sgpt.train.recipe import set_checkpointing

    model = load_model_dir(str(data["base"]))[0]
    name = ("is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing")
            else "is_gradient_checkpointing")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated name would raise here
        set_checkpointing(model, True)
        assert getattr(model, name)
        set_checkpointing(model, False)
        assert not getattr(model, name)
        common = dict(stage="cross-modal", model=str(data["base"]), data=[str(data["2"])],
                      batch_size=2, max_steps=2, lr=3e-3, eval_fraction=0.0)
        train(output=str(tmp_path / "on"), gradient_checkpointing=True, **common)
    train(output=str(tmp_path / "off"), **common)
    on, off = final_weights(tmp_path / "on"), final_weights(tmp_path / "off")
    assert all(torch.allclose(on[n], off[n], atol=1e-5) for n in off)


def test_shared_prefix_is_what_every_row_has_before_its_own_tokens():
    from sgpt.train.recipe import shared_prefix

    ids = torch.tensor([[5, 6, 7, 8, 9, 0], [5, 6, 7, 1, 0, 0], [5, 6, 7, 8, 2, 3]])
    mask = (torch.arange(6) < torch.tensor([[5], [4], [6]])).long()
    assert shared_prefix(ids, mask) == 3
    assert shared_prefix(ids[[0, 2]], mask[[0, 2]]) == 4  # the shorter row keeps a token
    assert shared_prefix(ids[[0, 0]], mask[[0, 0]]) == 4  # equal rows too
    assert shared_prefix(ids[:1], mask[:1]) == 0
    assert shared_prefix(torch.tensor([[4, 5], [3, 5]]), torch.ones(2, 2)) == 0


@pytest.mark.parametrize("lora", [False, True])
def test_packed_batch_same_loss_and_gradients_as_the_padded_batch(lora):
    """Against the loss over every position's logits of the right-padded batch, in float64:
    rows sharing a prefix, trained tokens inside it, the first of each row's own tokens
    predicted from the prefix's last position, a gap in one row's targets; packed into one
    row, into rows of at most 40 tokens (3 rows, the prefix in each), and with no prefix
    shared (padding dropped only). LLaMA's RMSNorm computes in float32 whatever the model's
    dtype, and the packed batch sums gradients at other points of the graph: the bound is
    float32 rounding."""
    from test_llm import tiny_llama

    from sgpt.train.recipe import loss_sum, pack, packed_loss_sum, shared_prefix

    model = tiny_llama().double()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False,
                                                 trainable_token_indices=[3, 1999]))
    g = torch.Generator().manual_seed(0)
    lengths, prefix = [30, 25, 34, 27], 20
    ids = torch.randint(0, 2000, (4, 34), generator=g)
    ids[:, :prefix] = ids[0, :prefix]
    ids[1, prefix] = 1999
    mask = (torch.arange(34) < torch.tensor(lengths)[:, None]).long()
    labels = torch.where(mask.bool(), ids, -100)
    labels[:, :prefix - 3] = -100
    labels[2, 26:29] = -100
    assert shared_prefix(ids, mask) == prefix

    def run(loss):  # each row's loss, and the gradients of their sum
        model.zero_grad()
        value = loss()
        value.sum().backward()
        return value.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                if p.grad is not None}

    def every_logit():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
            reduction="none").view(len(ids), -1).sum(1)

    whole = run(every_logit)
    cpu = torch.device("cpu")
    ways = {"trained logits": lambda: loss_sum(model, ids, mask, labels)}
    for width, p, groups in ((1024, prefix, 1), (40, prefix, 3), (1024, 0, 1)):
        packed = pack(ids, mask, labels, p, width)
        assert packed.input_ids.shape[0] == groups
        assert packed.computed == groups * packed.input_ids.shape[1] < ids.numel()
        ways[f"{width} {p}"] = lambda packed=packed: packed_loss_sum(model, packed, 4, cpu)
    for way, loss in ways.items():
        ours = run(loss)
        torch.testing.assert_close(ours[0], whole[0], rtol=1e-6, atol=0, msg=way)
        assert ours[1].keys() == whole[1].keys() and len(whole[1]) > 0
        for name, grad in whole[1].items():
            scale = float(grad.abs().max())
            assert scale > 0, name
            torch.testing.assert_close(ours[1][name], grad, rtol=0, atol=1e-6 * scale,
                                       msg=f"{way}: {name}")


def test_loss_norm_data_averages_each_source_apart_and_weighs_it_by_its_records(data,
                                                                                tmp_path):
    """--loss-norm data: each --data directory's targets are averaged apart, then weighted
    by the directory's share of the batch's sequences (a directory given twice is one
    source, drawn twice as often); token: every target alike."""
    from sgpt.train.data import Sequences, target_weights, trained_counts

    copy = tmp_path / "s2-copy"
    shutil.copytree(data["2"], copy)
    seqs = Sequences([str(data["2"]), str(copy), str(data["2"])])
    n = len(seqs) // 3
    assert seqs.source.tolist() == [0] * n + [1] * n + [0] * n
    idx = np.array([0, 1, 2, n, 2 * n + 3])  # source 0: 4 sequences, source 1: one
    counts = trained_counts(seqs, idx).astype(float)
    w = target_weights(seqs, idx, "data")
    zero = np.array([True, True, True, False, True])
    assert np.isclose((w * counts)[zero].sum(), 4 / 5) and np.isclose(w[3] * counts[3], 1 / 5)
    assert np.allclose(w[zero], w[0]) and not np.isclose(w[3], w[0])
    assert np.allclose(target_weights(seqs, idx, "token"), 1 / counts.sum())
    cut = trained_counts(seqs, idx, max_length=20)
    assert (cut <= counts).all() and (cut < counts).any()
    with pytest.raises(SettingsError, match="loss-norm"):
        make_config({}, dict(stage="cross-modal", model="m", data=["d"], output="o",
                             loss_norm="task")).check()
    out = tmp_path / "run"
    train(stage="cross-modal", model=str(data["base"]), data=[str(data["2"]), str(copy)],
          output=str(out), batch_size=4, max_steps=2, lr=3e-3, eval_fraction=0.0,
          loss_norm="data")
    assert all(np.isfinite(r["loss"]) for r in metrics(out) if "loss" in r)


def test_bfloat16_holds_the_frozen_base_in_bfloat16_and_changes_no_number(data, tmp_path):
    """Autocast rounds a float32 weight to bfloat16 at every use; a weight held rounded
    gives the same loss and gradients, bit for bit. Trainable weights, the embeddings and
    the optimizer stay float32."""
    from sgpt.train.recipe import hold_frozen_in

    config = make_config({}, dict(stage="cross-modal", model=str(data["base"]),
                                  data=[str(data["2"])], output=str(tmp_path / "o"),
                                  method="lora", batch_size=3, lora_dropout=0.0,
                                  dtype="bfloat16", eval_fraction=0.0))
    run = TrainRun(config, log=lambda m: None)
    model = run.model
    assert run.base_cast
    held = {n: p.dtype for n, p in model.named_parameters()}
    assert held["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] == (
        torch.bfloat16)
    assert held["base_model.model.model.layers.0.mlp.down_proj.weight"] == torch.bfloat16
    assert all(held[n] == torch.float32 for n, p in model.named_parameters()
               if p.requires_grad or "embed" in n or "norm" in n)
    batch = collate(run.data, run.train_idx[:3], run.pad_id)

    def step():
        model.zero_grad()
        loss = run._loss_sum(model, batch).sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                               if p.requires_grad}

    cast = step()
    for module in model.modules():  # the float32 weights the base had, back
        if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.bfloat16:
            module.weight.data = module.weight.data.float()
    assert hold_frozen_in(model, torch.float32) == 0
    plain = step()
    assert torch.equal(cast[0], plain[0])
    assert all(torch.equal(cast[1][n], plain[1][n]) for n in plain[1])


def test_the_same_run_from_another_directory_or_with_absolute_paths(data, tmp_path,
                                                                     monkeypatch):
    """A run started with relative paths is the same run when started again with absolute
    ones (a Slurm script, another shell): it resumes or is done, not 'other settings'."""
    monkeypatch.chdir(tmp_path)
    first = invoke(cli_args(data, "rel", "--max-steps", 1))
    assert first.exit_code == 0, first.output
    assert read_yaml_mapping(str(tmp_path / "rel" / "train_config.yaml"))["output"] == str(
        tmp_path / "rel")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = invoke(cli_args(data, tmp_path / "rel", "--max-steps", 1))
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output


def test_lora_on_a_new_vocabulary_trains_the_new_rows_and_merges(data, tmp_path):
    common = dict(stage="chain-of-modality", model=str(data["base"]), data=[str(data["3x"])],
                  batch_size=2, max_steps=4, lr=1e-2, eval_fraction=0.0, lora_dropout=0.0,
                  dtype="bfloat16")  # autocast on the CPU
    train(output=str(tmp_path / "a"), **common)
    train(output=str(tmp_path / "m"), merge=True, **common)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a" / "adapter_model.safetensors"), "pt") as f:
        shapes = [tuple(f.get_slice(n).get_shape()) for n in f.keys()]
    assert (K + 6, 32) in shapes  # the new tokens' rows, not the whole matrix
    assert not any(s[0] == 2000 + K + 6 for s in shapes)
    adapter, meta_a = load_model_dir(str(tmp_path / "a"))
    merged, meta_m = load_model_dir(str(tmp_path / "m"))
    assert meta_a["adapter"] and not meta_m["adapter"]
    ids = [1, 40, 2000, 2500, 3005]
    assert torch.allclose(logits(adapter, ids), logits(merged, ids), atol=1e-4)
    base = load_model_dir(str(data["base"]))[0]
    old_ids = [1, 40, 7]  # LoRA moved the old tokens' predictions too
    assert not torch.allclose(logits(adapter, old_ids)[:, :2000], logits(base, old_ids),
                              atol=1e-3)


def test_a_lora_stage_on_an_adapter_continues_it_over_the_same_base(data, tmp_path):
    """Stages 2 and 3 with LoRA end as one adapter over the base (the embedded default)."""
    common = dict(batch_size=2, max_steps=3, lr=1e-2, eval_fraction=0.0, lora_dropout=0.0,
                  method="lora", lora_r=4)
    s2, s3 = tmp_path / "s2", tmp_path / "s3"
    train(stage="cross-modal", model=str(data["base"]), data=[str(data["2"])], output=str(s2),
          **common)
    train(stage="chain-of-modality", model=str(s2), data=[str(data["3"])], output=str(s3),
          **{**common, "lora_r": 8})  # the adapter's own rank is kept
    meta2 = json.loads((s2 / MODEL_META).read_text())
    meta3 = json.loads((s3 / MODEL_META).read_text())
    assert meta3["adapter"] and meta3["base_model"] == meta2["base_model"] == str(data["base"])
    assert meta3["new_token_ids"] == meta2["new_token_ids"]
    assert json.loads((s3 / "adapter_config.json").read_text())["r"] == 4
    from safetensors.torch import load_file

    w2, w3 = (load_file(str(d / "adapter_model.safetensors")) for d in (s2, s3))
    assert w2.keys() == w3.keys()
    assert any(not torch.equal(w2[n], w3[n]) for n in w2 if "lora_B" in n)
    assert any(not torch.equal(w2[n], w3[n]) for n in w2 if "token" in n)  # new rows trained
    ids = [1, 2000, 2005, 3001]
    assert not torch.allclose(logits(load_model_dir(str(s2))[0], ids),
                              logits(load_model_dir(str(s3))[0], ids), atol=1e-4)


def test_config_file_flags_override_and_example_configs(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("stage: cross-modal\nlr: 1.0e-4\nlora-r: 4\ndata: [a, b]\n")
    config = make_config(read_yaml_mapping(str(f)), {"lr": 3e-4, "model": "m", "output": "o"})
    assert (config.lr, config.lora_r, config.data, config.method) == (3e-4, 4, ["a", "b"],
                                                                      "full")
    with pytest.raises(TrainError, match="unknown setting 'lerning_rate'"):
        make_config({"lerning_rate": 1}, {})
    for stage in ("pretrain", "cross-modal", "chain-of-modality"):
        values = read_yaml_mapping(str(ROOT / "examples" / "configs" / f"{stage}.yaml"))
        config = make_config(values, {"model": "m", "data": ["d"], "output": "o"})
        config.check()
        assert config.stage == stage
    assert make_config(read_yaml_mapping(str(ROOT / "examples/configs/chain-of-modality.yaml")),
                       {}).method == "lora"
    assert TrainConfig().lora_target == ["q_proj", "v_proj"]


# --- the command line: resume, torchrun, bad input ----------------------------------------------

def cli_args(data, out, *extra, stage="cross-modal", key="2"):
    return ["--stage", stage, "--model", str(data["base"]), "--data", str(data[key]),
            "-o", str(out), "--batch-size", "2", "--lr", "3e-3", "--eval-fraction", "0",
            "--log-every", "1", *map(str, extra)]


def final_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def test_kill_9_then_the_same_command_resumes_to_the_same_weights(data, tmp_path):
    args = cli_args(data, tmp_path / "killed", "--max-steps", 40, "--save-every", 5,
                    "--lora-dropout", "0.1", "--method", "lora", "--merge", "--epochs", 1)
    proc = subprocess.Popen([tool("sgpt-train"), *args], env={**os.environ, **ENV},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["step"] >= 10:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / MODEL_META).exists()
    stopped_at = json.loads(state.read_text())["step"]
    assert 10 <= stopped_at < 40
    again = run_tool("sgpt-train", *args, env=ENV)
    assert again.returncode == 0, again.stderr
    assert f"resuming from {tmp_path / 'killed' / 'checkpoint'} at step {stopped_at}" in \
        again.stderr
    whole = invoke(cli_args(data, tmp_path / "whole", "--max-steps", 40, "--save-every", 5,
                            "--lora-dropout", "0.1", "--method", "lora", "--merge"))
    assert whole.exit_code == 0, whole.output
    a, b = final_weights(tmp_path / "killed"), final_weights(tmp_path / "whole")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    steps = [r["step"] for r in metrics(tmp_path / "killed") if "loss" in r]
    assert steps == list(range(1, 41))  # each step logged once, resumed or not
    # a line for each start, naming the machine; the training time carried over the kill
    runs = [r for r in metrics(tmp_path / "killed") if "run" in r]
    assert [r["step"] for r in runs] == [0, stopped_at]
    assert {r["run"]["device"] for r in runs} == {"cpu"}
    assert all({"started", "cpu", "threads", "torch", "dtype", "frozen", "processes"}
               <= r["run"].keys() for r in runs)
    elapsed = [r["elapsed_s"] for r in metrics(tmp_path / "killed") if "loss" in r]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    # a finished run is not redone
    done = invoke(args)
    assert done.exit_code == 0 and "nothing to do" in done.output


def test_sigterm_saves_the_step_it_finished_and_the_same_command_resumes(data, tmp_path):
    """SIGTERM (timeout, Slurm) between checkpoints: the step it lands in is finished and
    saved, exit 143; the same command ends where an uninterrupted run ends."""
    args = cli_args(data, tmp_path / "stopped", "--max-steps", 30, "--save-every", 1000)
    proc = subprocess.Popen([tool("sgpt-train"), *args], env={**os.environ, **ENV},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the signal: " + proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    stopped_at = json.loads((tmp_path / "stopped" / "checkpoint" / "state.json").read_text()
                            )["step"]
    assert 5 <= stopped_at < 30 and not (tmp_path / "stopped" / MODEL_META).exists()
    assert (f"interrupted by SIGTERM: checkpoint of step {stopped_at} saved in "
            f"{tmp_path / 'stopped'}; run the same command again to resume") in stderr
    again = run_tool("sgpt-train", *args, env=ENV)
    assert again.returncode == 0 and f"at step {stopped_at}" in again.stderr, again.stderr
    whole = invoke(cli_args(data, tmp_path / "whole", "--max-steps", 30))
    assert whole.exit_code == 0, whole.output
    a, b = final_weights(tmp_path / "stopped"), final_weights(tmp_path / "whole")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_snapshot_writes_the_checkpoint_s_model_and_leaves_the_run_as_it_was(data, tmp_path):
    """--snapshot DEST: the model at -o DIR's checkpoint (its trainable weights those of the
    checkpoint, bit for bit), with DIR's own settings; DIR is not touched."""
    from safetensors.torch import load_file

    out, dest = tmp_path / "run", tmp_path / "now"
    done = invoke(cli_args(data, out, "--max-steps", 4, "--save-every", 2, "--method", "lora",
                           "--keep-checkpoint"))
    assert done.exit_code == 0, done.output
    before = contents(out)
    made = invoke(["-o", out, "--snapshot", dest])
    assert made.exit_code == 0, made.output
    assert f"{dest}: the model at step 2 of {out}" in made.output
    assert contents(out) == before
    meta = json.loads((dest / MODEL_META).read_text())
    assert meta["adapter"] and meta["snapshot"] == {"run": str(out.resolve()), "step": 2, "of": 4}
    model, _ = load_model_dir(str(dest), merge=False)
    trained = dict(model.named_parameters())
    saved = load_file(str(out / "checkpoint" / "weights.safetensors"))
    assert saved and set(saved) <= set(trained)
    for name, weight in saved.items():
        assert torch.equal(trained[name].detach(), weight), name
    assert invoke(["-o", out, "--snapshot", dest]).exit_code == 0  # an earlier snapshot
    for args, words in ((["-o", out, "--snapshot", tmp_path / "x", "--lr", "1"], "drop --lr"),
                        (["--snapshot", tmp_path / "x"], "needs -o DIR"),
                        (["-o", out, "--snapshot", out], "own directory")):
        result = invoke(args)
        assert result.exit_code == (1 if words == "own directory" else 2), result.output
        assert words in result.output
    fresh = tmp_path / "fresh"
    assert invoke(cli_args(data, fresh, "--max-steps", 2, "--method", "lora")).exit_code == 0
    one_error_line(invoke(["-o", fresh, "--snapshot", tmp_path / "y"]), "no checkpoint")
    one_error_line(invoke(["-o", tmp_path / "none", "--snapshot", tmp_path / "y"]),
                   "holds no sgpt-train run")
    assert contents(out) == before


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_processes_equal_one_with_the_same_global_batch(data, tmp_path, strategy):
    """Each process computes its micro-batch as the single process computes the same one, the
    two gradients are summed (exact for two), scaled by powers of two (exact) and clipped by
    a norm that does not depend on the sharding (clip_grad_norm): the weights come out equal
    (bitwise on the CPUs seen), up to float32 rounding in a kernel that picks another path
    for another memory layout: a few ulps of a step, well inside the bounds below after 6
    steps. In float32: under bfloat16 autocast a one-ulp difference in a weight can flip its
    bfloat16 rounding, and the comparison would measure autocast, not the distribution."""
    dtype = ("--dtype", "float32")

    def torchrun(port: int):
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
             "--master-port", str(port), tool("sgpt-train"),
             *cli_args(data, tmp_path / "two", "--max-steps", 6, "--device", "cpu",
                       "--strategy", strategy, "--save-every", 3, "--eval-fraction", 0.2,
                       "--keep-checkpoint", *dtype)],
            env={**os.environ, **ENV}, capture_output=True, text=True, timeout=300)

    port = 29500 + os.getpid() % 1000 + 2 * (strategy == "fsdp")
    two = torchrun(port)
    assert two.returncode == 0, two.stderr[-3000:]
    if strategy == "fsdp":  # sharded state gathered into the checkpoint, and scattered back
        finished = final_weights(tmp_path / "two")
        (tmp_path / "two" / MODEL_META).unlink()
        again = torchrun(port + 1)
        assert again.returncode == 0 and "at step 3 of 6" in again.stderr, again.stderr[-3000:]
        for name, t in final_weights(tmp_path / "two").items():
            torch.testing.assert_close(t, finished[name], rtol=1e-6, atol=1e-7, msg=name)
    one = invoke(cli_args(data, tmp_path / "one", "--max-steps", 6, "--grad-accum", 2,
                          "--eval-fraction", 0.2, *dtype))
    assert one.exit_code == 0, one.output
    assert "on 2 process(es)" in two.stderr and "on 1 process(es)" in one.output
    a, b = final_weights(tmp_path / "two"), final_weights(tmp_path / "one")
    assert "model.embed_tokens.weight" in a.keys() & b.keys()
    for name in a.keys() & b.keys():
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    (m2, _), (m1, _) = (load_model_dir(str(tmp_path / run)) for run in ("two", "one"))
    assert embeddings_tied(m2) and embeddings_tied(m1)
    torch.testing.assert_close(logits(m2, [1, 2001, 5]), logits(m1, [1, 2001, 5]), rtol=1e-4,
                               atol=1e-4)
    losses = {run: [r.get("loss", r.get("eval_loss")) for r in metrics(tmp_path / run)
                    if "run" not in r] for run in ("one", "two")}
    assert losses["two"] == pytest.approx(losses["one"], rel=1e-4)


def invoke(args):
    from sgpt.cli.train import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def contents(path: Path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def one_error_line(result, *words):
    lines = result.output.strip().splitlines() if result.output.strip() else []
    assert result.exit_code == 1, result.output
    errors = [line for line in lines if line.startswith("sgpt-train: error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for w in words:
        assert w in errors[0], errors[0]


def test_bad_input_one_line_exit_1_nothing_overwritten(data, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "train_config.yaml").write_text("stage: pretrain\n")
    (existing / "keep.txt").write_text("precious")
    before = contents(existing)
    other_tok = extended("llama", "reference", 500)
    s2_other = pack(other_tok, [{"id": "x", "prefix": "P ", "plain_text":
                                 "[Human]: hi<eoh> [SpeechGPT]: <3><4><eoa> "}] * 4,
                    tmp_path / "s2-other")
    empty = tmp_path / "empty"
    pack(data["tok"], [], empty, stage="2")
    moved_tok = tmp_path / "moved-tok"  # data packed with a tokenizer since moved away
    shutil.copytree(data["tok"], moved_tok)
    s2_moved = pack(moved_tok, [{"id": "x", "prefix": "P ", "plain_text":
                                 "[Human]: hi<eoh> [SpeechGPT]: <3><4><eoa> "}] * 4,
                    tmp_path / "s2-moved")
    shutil.rmtree(moved_tok)
    k500_model = tmp_path / "k500"
    tiny_llama_dir(k500_model, tokenizer=other_tok)
    cases = [
        # shards of another stage
        (cli_args(data, existing, stage="pretrain", key="2"), ("cross-modal (stage 2) data",
                                                               "--stage pretrain")),
        (cli_args(data, existing, stage="cross-modal", key="3"), ("chain-of-modality",)),
        (cli_args(data, existing, stage="chain-of-modality", key="1"), ("pretrain (stage 1)",)),
        # shards built with another tokenizer than the one given
        (cli_args(data, existing) + ["--tokenizer", str(other_tok)], ("another tokenizer",)),
        # empty data
        (cli_args(data, existing)[:4] + ["--data", str(empty)] + cli_args(data, existing)[6:],
         ("no sequences",)),
        # a model whose own tokenizer disagrees with the data's
        (cli_args(data, existing)[:2] + ["--model", str(k500_model)] + cli_args(data,
                                                                               existing)[4:],
         ("vocabulary mismatch",)),
        # not packed data at all
        (cli_args(data, existing)[:4] + ["--data", str(tmp_path)] + cli_args(data, existing)[6:],
         ("no finished part",)),
        # held-out data of another stage
        (cli_args(data, existing) + ["--eval-data", str(data["1"])],
         (f"{data['1']}: pretrain (stage 1) data", "--stage cross-modal")),
        # a mistyped --tokenizer; data whose tokenizer has moved away
        (cli_args(data, existing) + ["--tokenizer", str(tmp_path / "nope")],
         ("nope: no such tokenizer directory",)),
        (cli_args(data, existing)[:4] + ["--data", str(s2_moved)] + cli_args(data, existing)[6:],
         ("moved-tok, is not there", "--tokenizer DIR")),
        # a mistyped --data path, or the JSONL file instead of its packed shards
        (cli_args(data, existing)[:4] + ["--data", str(tmp_path / "nope")]
         + cli_args(data, existing)[6:], ("nope: no such directory of packed shards",)),
        (cli_args(data, existing)[:4] + ["--data", str(existing / "keep.txt")]
         + cli_args(data, existing)[6:], ("a file, not a directory", "sgpt-tokenize pack")),
    ]
    for args, words in cases:
        one_error_line(invoke(args), *words)
    assert contents(existing) == before
    # a directory of another run is not taken over
    one_error_line(invoke(cli_args(data, existing)), "holds a run with other settings")
    # an output that cannot be made: named before the model loads
    one_error_line(invoke(cli_args(data, existing / "keep.txt" / "out")),
                   f"{existing / 'keep.txt'} is not a directory")
    # a shard packed with another tokenizer than its sibling
    one_error_line(invoke(cli_args(data, tmp_path / "new") + ["--data", str(s2_other)]),
                   "another tokenizer")
    assert not (tmp_path / "new").exists()
    assert invoke(["--stage", "nope"]).exit_code == 2
    # missing or invalid settings are usage errors (exit 2, click's format), as in every tool
    bad_yaml = tmp_path / "typo.yaml"
    bad_yaml.write_text("lerning_rate: 1\n")
    bad_type = tmp_path / "type.yaml"
    bad_type.write_text("lr: fast\nbatch-size: 2\n")
    for args, words in [
            (cli_args(data, existing)[2:], "--stage must be one of"),
            (cli_args(data, existing)[:6], "no --output given"),
            (cli_args(data, existing, "--batch-size", 0), "--batch-size must be at least 1"),
            (cli_args(data, existing, "--config", tmp_path / "nope.yaml"),
             "Invalid value for '--config'"),
            (cli_args(data, existing, "--config", bad_yaml),
             f"{bad_yaml}: unknown setting 'lerning_rate'"),
            (cli_args(data, existing, "--config", bad_type),
             f"{bad_type}: setting 'lr': 'fast' is not a number")]:
        result = invoke(args)
        assert result.exit_code == 2 and words in result.output, (args, result.output)
        assert "Traceback" not in result.output
    # the installed command says the same in one line
    r = run_tool("sgpt-train", *cli_args(data, existing, stage="pretrain", key="2"), env=ENV)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("sgpt-train: error: ")
