"""sgpt-generate's decoding against a naive per-record transformers ``generate`` loop.

Side by side in one run, on the same model and prompts, greedy decoding, fp32 then bf16:

* naive: ``model.generate(prompt, do_sample=False, ...)`` one record at a time (what a
  script around the reference CLI does);
* sgpt, batch 1 and batch B, each with and without the shared system-prefix cache.

Every sgpt run must produce exactly the naive loop's tokens (checked; a mismatch is
printed). Printed: new tokens/s, the ratio to naive, and time to first token of a batch
(prefill) with and without the prefix cache: what reusing the prefix's key/value cache
saves. Medians over ``--repeats``, runs interleaved so that load from other processes
falls on all alike.

The model is a LLaMA with random weights and the real vocabulary size (LLaMA's 32,000
pieces + SpeechGPT's 1,006 tokens, from the sentencepiece model the tests train), small
enough for a CPU by default (``--hidden 256 --layers 4``); prompts are the reference
inference prompts around spoken questions (20 to 200 units) and text questions.

    .venv/bin/python bench/generate.py [--prompts 8] [--new-tokens 48] [--batch-size 8]
        [--hidden 256] [--layers 4] [--repeats 3] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_threads_option, apply_threads, machine_line  # noqa: E402
from fakes.tokenizers import WORDS, llama_base  # noqa: E402

from sgpt.generate.decode import Generator, Sampling, build_prompt, system_prefix_ids  # noqa: E402
from sgpt.lm.tokenizer import SpeechTokenizer, extend  # noqa: E402


def make_tokenizer() -> SpeechTokenizer:
    out = Path(tempfile.mkdtemp(prefix="sgpt-bench-tok-")) / "tok"
    extend(str(llama_base(32000)), str(out), k=1000)
    return SpeechTokenizer.from_dir(str(out))


def make_model(vocab: int, hidden: int, layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append({"id": f"s{i}", "units": [rng.randrange(1000)
                                                 for _ in range(rng.randint(20, 200))]})
        else:
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30)))
            out.append({"id": f"t{i}", "text": words.capitalize() + "?"})
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def naive(model, tok, prompts, new_tokens: int, device) -> dict[str, list[int]]:
    out = {}
    for p in prompts:
        ids = torch.tensor([p.ids], device=device)
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=min(10, new_tokens),
                             pad_token_id=tok.eos_id, eos_token_id=tok.eos_id)
        new = gen[0, ids.shape[1]:].tolist()
        out[p.id] = new[:-1] if new and new[-1] == tok.eos_id else new
    return out


def sgpt_generator(model, tok, new_tokens: int, batch: int, prefix: bool) -> Generator:
    """Made once per model, as the CLI does; the prefix cache is computed here (not timed)."""
    s = Sampling(greedy=True, max_new_tokens=new_tokens, min_new_tokens=min(10, new_tokens))
    gen = Generator(model, tok, s, batch_size=batch, prefix_cache=prefix)
    gen.prefix_cache()
    return gen


def sgpt(gen: Generator, prompts, new_tokens: int) -> dict[str, list[int]]:
    gen.sampling.max_new_tokens = new_tokens
    return {r.prompt.id: r.new_ids for r in gen.generate(prompts)}


def agreement(out: dict[str, list[int]], reference: dict[str, list[int]]) -> str:
    """How far two sets of answers agree: identical answers, tokens before they part."""
    same = sum(out[k] == reference[k] for k in reference)
    shared = total = 0
    for k, ref in reference.items():
        n = 0
        while n < min(len(ref), len(out[k])) and ref[n] == out[k][n]:
            n += 1
        shared += n
        total += len(ref)
    return f"{same}/{len(reference)} identical, {100 * shared / max(1, total):.0f}% of tokens " \
           "before they part"


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - t0, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    add_threads_option(ap, default=None)  # None: torch's own default
    args = ap.parse_args()
    if args.threads:
        apply_threads(args.threads)
    device = torch.device(args.device)
    tok = make_tokenizer()
    prompts = [build_prompt(r, tok) for r in records(args.prompts)]
    lengths = [len(p.ids) for p in prompts]
    base = make_model(len(tok), args.hidden, args.layers)
    print(machine_line(torch.get_num_threads()))
    print(f"{len(prompts)} prompts of {min(lengths)}-{max(lengths)} tokens (the first "
          f"{len(system_prefix_ids(tok))} shared), vocab {len(tok)}, LLaMA hidden "
          f"{args.hidden} x {args.layers} layers, {args.new_tokens} new tokens each, greedy, "
          f"{device}")
    configs = [("naive transformers generate, per record", None, None),
               ("sgpt batch 1, no prefix cache", 1, False),
               ("sgpt batch 1, prefix cache", 1, True),
               (f"sgpt batch {args.batch_size}, no prefix cache", args.batch_size, False),
               (f"sgpt batch {args.batch_size}, prefix cache", args.batch_size, True)]
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        model = base.to(device=device, dtype=dtype)
        gens = {name: sgpt_generator(model, tok, args.new_tokens, batch, prefix)
                for name, batch, prefix in configs if batch is not None}
        times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
        first: dict[str, list[float]] = {"no prefix cache": [], "prefix cache": []}
        reference = None
        mismatches: dict[str, str] = {}
        for _ in range(args.repeats):
            for name, batch, _ in configs:
                if batch is None:
                    t, out = timed(lambda m=model: naive(m, tok, prompts, args.new_tokens,
                                                         device), device)
                    reference = out
                else:
                    t, out = timed(lambda g=gens[name]: sgpt(g, prompts, args.new_tokens),
                                   device)
                    if reference is not None and out != reference:
                        mismatches[name] = agreement(out, reference)
                times[name].append(t)
            for label, name in (("no prefix cache", configs[3][0]),
                                ("prefix cache", configs[4][0])):
                t, _ = timed(lambda g=gens[name]: sgpt(g, prompts, 1), device)
                first[label].append(t)
        total = sum(len(v) for v in reference.values())
        print(f"\n{dtype_name}: {total} new tokens per run, median of {args.repeats}")
        base_t = statistics.median(times[configs[0][0]])
        for name, _, _ in configs:
            t = statistics.median(times[name])
            same = f"  differs from naive: {mismatches[name]}" if name in mismatches else ""
            print(f"  {name:42s} {total / t:9.1f} new tokens/s  x{base_t / t:5.2f}{same}")
        a, b = (statistics.median(first[k]) for k in ("no prefix cache", "prefix cache"))
        print(f"  prefill of all prompts (batch {args.batch_size}): {a * 1000:.0f} ms without "
              f"the prefix cache, {b * 1000:.0f} ms with it (x{a / b:.2f})")
        if not mismatches:
            print("  every sgpt run gave exactly the naive loop's tokens")
        else:
            print("  (low precision: a prefix computed apart, or rows computed in a batch, round "
                  "differently; where two tokens are near-tied, greedy picks can part)")


if __name__ == "__main__":
    main()
