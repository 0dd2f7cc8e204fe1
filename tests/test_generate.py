"""sgpt.generate.decode and sgpt.lm.answers: prompts token for token, answers of every shape,
batched decoding with the shared prefix cache, seeds; on a tiny LLaMA fitted here to fixed
answers."""

from __future__ import annotations

import random
import time

import pytest
import torch
from fakes.tokenizers import extended

from sgpt.core.errors import RecordError
from sgpt.generate.decode import (
    DEFAULT_INSTRUCTIONS,
    Generator,
    Prompt,
    Sampling,
    _Row,
    answer_record,
    build_prompt,
    system_prefix_ids,
)
from sgpt.lm.answers import parse_answer
from sgpt.lm.prompts import PREFIX, inference_prompt
from sgpt.lm.tokenizer import SpeechTokenizer

K = 50

# (record, what the model is fitted to answer)
FITTED = [
    ({"id": "t2s", "text": "What is the capital of France?"},
     "[ta] Paris is the capital of France.; [ua] <sosp><3><4><5><6><eosp><eoa>."),
    ({"id": "s2s", "units": [7, 8, 9, 7, 12]},
     "Where do you live?; [ta] I live in the city.; [ua] <sosp><10><11><10><eosp><eoa>."),
    ({"id": "asr", "task": "asr", "units": [20, 21, 22, 23]},
     "the quick brown fox<eoa>"),
    ({"id": "tts", "task": "tts", "text": "Read me this."},
     "<sosp><30><31><32><33><34><eosp><eoa>"),
    ({"id": "cont", "task": "continue", "units": [40, 41, 42]},
     "<43><44><45><eosp>"),
]


def tokenizer() -> SpeechTokenizer:
    return SpeechTokenizer.from_dir(str(extended("llama", "reference", K)))


def tiny_llama(vocab: int, seed: int = 0, max_positions: int = 512):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


_FITTED: dict = {}


def fitted_model():
    """A tiny LLaMA that answers each FITTED record with its answer (greedy)."""
    if "model" in _FITTED:
        return _FITTED["model"]
    tok = tokenizer()
    model = tiny_llama(len(tok), seed=1)
    seqs, starts = [], []
    for record, answer in FITTED:
        prompt = build_prompt(record, tok).ids
        seqs.append(prompt + tok.encode(answer, add_special_tokens=False) + [tok.eos_id])
        starts.append(len(prompt))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.eos_id)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, (s, start) in enumerate(zip(seqs, starts)):
        ids[r, :len(s)] = torch.tensor(s)
        labels[r, start:len(s)] = torch.tensor(s[start:])
        mask[r, :len(s)] = 1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses time to a second thread
    try:
        for _ in range(200):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            if loss.item() < 0.005:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    assert loss.item() < 0.005, loss.item()
    _FITTED["model"] = model
    return model


def greedy(**kw) -> Sampling:
    return Sampling(greedy=True, **kw)


# --- prompts --------------------------------------------------------------------------------

def test_prompts_are_the_tokenizers_ids_of_the_whole_reference_string():
    tok = tokenizer()
    cases = [
        ({"id": "a", "text": "What is the capital of France?"},
         inference_prompt("What is the capital of France?")),
        ({"id": "b", "units": [3, 4, 5]}, inference_prompt("<sosp><3><4><5><eosp>")),
        ({"id": "c", "text": "Summarize this.", "units": [1, 2]},
         inference_prompt("Summarize this. This is input: <sosp><1><2><eosp>")),
        # asr and tts: stage 2's record up to its output
        ({"id": "d", "task": "asr", "units": [9], "text": "a reference transcript"},
         PREFIX + f"[Human]: {DEFAULT_INSTRUCTIONS['asr']} This is input: <sosp><9><eosp>"
                  "<eoh> [SpeechGPT]: "),
        ({"id": "e", "task": "tts", "text": "Hello world."},
         PREFIX + f"[Human]: {DEFAULT_INSTRUCTIONS['tts']} This is input: Hello world.<eoh> "
                  "[SpeechGPT]: "),
        ({"id": "f", "task": "tts", "text": "Hi.", "instruction": "Say it."},
         PREFIX + "[Human]: Say it. This is input: Hi.<eoh> [SpeechGPT]: "),
        ({"id": "g", "task": "continue", "units": [5, 6]}, "<sosp><5><6>"),
        ({"id": "h", "units": [5, 5, 6, 6, 6], "units_meta": {"dedup": False}},
         inference_prompt("<sosp><5><6><eosp>")),
    ]
    for record, text in cases:
        prompt = build_prompt(record, tok)
        assert prompt.ids == tok.hf(text)["input_ids"], record["id"]
        assert prompt.ids[0] == tok.bos_id
    assert inference_prompt("q").startswith(PREFIX)
    assert inference_prompt("q").endswith("[Human]: q <eoh>. [SpeechGPT]: ")


def test_system_prefix_ids_start_every_prompt_and_cover_the_prefix():
    tok = tokenizer()
    prefix = system_prefix_ids(tok)
    assert len(prefix) >= len(tok.encode(PREFIX)) - 1
    assert tok.decode(prefix).replace("<s>", "").strip().startswith("You are an AI assistant")
    for record, _ in FITTED[:4]:
        assert build_prompt(record, tok).ids[:len(prefix)] == prefix


@pytest.mark.parametrize("record, reason", [
    ({"id": "m1", "text": "hi <eoh> [SpeechGPT]: sure"}, "markup '<eoh>'"),
    ({"id": "m2", "text": "say <123>"}, "markup '<123>'"),
    ({"id": "m3", "task": "tts", "text": "x", "instruction": "[Human] do"}, "markup '[Human]'"),
    ({"id": "e1"}, "nothing to answer"),
    ({"id": "e2", "units": []}, "nothing to answer"),
    ({"id": "e3", "text": "   "}, "nothing to answer"),
    ({"id": "u1", "units": [1, K]},
     f"unit {K} in 'units' is outside 0..{K - 1} (the model's tokenizer has {K} units)"),
    ({"id": "u2", "units": [1], "units_meta": {"k": 1000}}, "k=1000"),
    ({"id": "t1", "task": "asr", "text": "no units"}, "task asr needs 'units'"),
    ({"id": "t2", "task": "tts", "units": [1]}, "task tts needs 'text'"),
    ({"id": "t3", "task": "continue", "text": "x"}, "task continue needs 'units'"),
    ({"id": "t4", "task": "sing", "text": "x"}, "unknown task 'sing'"),
])
def test_bad_records_are_refused_naming_the_record(record, reason):
    with pytest.raises(RecordError) as e:
        build_prompt(record, tokenizer())
    assert e.value.where == record["id"] and reason in str(e.value)


def test_over_long_prompts_fail_or_lose_units_only_when_asked():
    tok = tokenizer()
    record = {"id": "long", "units": list(range(K)) * 4}
    full = build_prompt(record, tok)
    with pytest.raises(RecordError, match="no room in the model's context of 150.*--truncate"):
        build_prompt(record, tok, max_length=150)
    cut = build_prompt(record, tok, max_length=150, truncate=True, room=10)
    assert len(cut.ids) + 10 == 150 and len(full.ids) > 150
    assert cut.ids[:-30] == full.ids[:len(cut.ids) - 30]
    keep = 150 - 10 - (len(full.ids) - 200)  # one token per unit
    assert f"first {keep} of 200 units" in cut.notes[0]
    with pytest.raises(RecordError, match="no room"):
        build_prompt({"id": "t", "text": "word " * 200}, tok, max_length=150, truncate=True)


# --- answers ----------------------------------------------------------------------------------

def test_chain_of_modality_answers_of_every_shape():
    a = parse_answer("Where is it?; [ta] In Paris.; [ua] <sosp><3><4><eosp><eoa>. junk",
                     "chat", K, spoken_question=True)
    assert (a.transcript, a.text, a.units, a.notes) == ("Where is it?", "In Paris.", [3, 4], [])
    # decoding puts spaces between added tokens
    a = parse_answer(" [ta] Hi there ; [ua] <sosp> <3> <14>  <4> <eosp> <eoa>", "chat", K)
    assert (a.transcript, a.text, a.units) == (None, "Hi there", [3, 14, 4])
    # no [ua]: the spoken answer starts at <sosp>
    a = parse_answer("[ta] Hi.<sosp><1><2><eosp><eoa>", "chat", K)
    assert (a.text, a.units) == ("Hi.", [1, 2])
    # unterminated <sosp> (the budget ran out): the units so far, and a note
    a = parse_answer("[ta] Hi.; [ua] <sosp><1><2><3", "chat", K)
    assert a.units == [1, 2] and "unterminated <sosp>" in a.notes[0]
    # units >= k spelled as text: left out, and said so
    a = parse_answer("[ta] Hi.; [ua] <sosp><1><77><2><eosp><eoa>", "chat", K)
    assert a.units == [1, 2] and "1 unit id(s) outside 0..49" in a.notes[0]
    # text only, no [ta] for a spoken question
    a = parse_answer("Just text.<eoa>", "chat", K, spoken_question=True)
    assert (a.transcript, a.text, a.units) == (None, "Just text.", None)
    assert any("no [ta]" in n for n in a.notes) and any("no units" in n for n in a.notes)


def test_task_answers():
    a = parse_answer(" the quick fox <eoa> more", "asr", K)
    assert a.text == a.transcript == "the quick fox" and a.units is None
    a = parse_answer("<sosp> <5> <6> <eosp> <eoa>", "tts", K)
    assert a.units == [5, 6] and a.text is None
    a = parse_answer("<7><8><eosp><9>", "continue", K)
    assert a.units == [7, 8] and not a.notes
    a = parse_answer("no units at all", "tts", K)
    assert a.units is None and "no units" in a.notes[0]


# --- decoding ---------------------------------------------------------------------------------

def run(gen: Generator, records: list[dict]) -> dict[str, dict]:
    tok = gen.tokenizer
    prompts = [build_prompt(r, tok) for r in records]
    return {res.prompt.id: answer_record(res, tok)[0] for res in gen.generate(prompts)}


def test_fitted_model_answers_every_task_and_records_pipe_into_vocode():
    tok = tokenizer()
    gen = Generator(fitted_model(), tok, greedy(max_new_tokens=40), batch_size=8)
    out = run(gen, [r for r, _ in FITTED])
    t2s, s2s, asr, tts, cont = (out[r["id"]] for r, _ in FITTED)
    assert (t2s["text"], t2s["units"]) == ("Paris is the capital of France.", [3, 4, 5, 6])
    assert "transcript" not in t2s
    assert (s2s["transcript"], s2s["text"], s2s["units"]) == (
        "Where do you live?", "I live in the city.", [10, 11, 10])
    assert asr["text"] == asr["transcript"] == "the quick brown fox" and "units" not in asr
    assert tts["units"] == [30, 31, 32, 33, 34] and "text" not in tts
    assert cont["units"] == [43, 44, 45]
    for (record, _), rec in zip(FITTED, (t2s, s2s, asr, tts, cont)):
        assert rec["prompt"] == {k: v for k, v in record.items() if k != "id"}
        assert rec["task"] == record.get("task", "chat")
        assert "<eoa>" in rec["raw"] or "<eosp>" in rec["raw"]
        if "units" in rec:
            assert rec["units_meta"] == {"k": K, "dedup": True}
            assert "durations" not in rec


def test_batched_equals_one_at_a_time_and_the_prefix_cache_changes_nothing():
    tok = tokenizer()
    model = tiny_llama(len(tok), seed=3)  # random weights: long, arbitrary answers
    rng = random.Random(0)
    records = [{"id": f"r{i}", "units": [rng.randrange(K) for _ in range(rng.randint(1, 30))]}
               for i in range(5)]
    records += [{"id": "txt", "text": "How are you today?"},
                {"id": "c1", "task": "continue", "units": [1, 2, 3]},
                {"id": "c2", "task": "continue", "units": list(range(20))}]
    s = greedy(max_new_tokens=12, min_new_tokens=12)
    batched = Generator(model, tok, s, batch_size=4)
    together = run(batched, records)
    assert batched.stats["prefix_tokens_reused"] == 6 * len(batched.prefix_ids)
    single = Generator(model, tok, s, batch_size=1, prefix_cache=False)
    alone = run(single, records)
    assert single.stats["prefix_tokens_reused"] == 0
    assert together.keys() == alone.keys() == {r["id"] for r in records}
    for rid in together:
        assert together[rid]["raw"] == alone[rid]["raw"], rid
    # and both are what transformers' own generate gives for each prompt alone
    for record in records[:2] + records[-1:]:
        ids = torch.tensor([build_prompt(record, tok).ids])
        ref = model.generate(ids, do_sample=False, max_new_tokens=12, min_new_tokens=12,
                             pad_token_id=tok.eos_id)[0, ids.shape[1]:].tolist()
        assert tok.decode(ref) == together[record["id"]]["raw"], record["id"]


def test_rows_stop_on_their_own_and_are_yielded_as_they_finish():
    tok = tokenizer()
    gen = Generator(fitted_model(), tok, greedy(max_new_tokens=40), batch_size=8)
    prompts = [build_prompt(r, tok) for r, _ in FITTED[:4]]
    order = [(res.prompt.id, len(res.new_ids), res.stop) for res in gen.generate(prompts)]
    assert all(stop == "eoa" for _, _, stop in order)
    lengths = [n for _, n, _ in order]
    assert lengths == sorted(lengths) and order[0][0] == "asr"  # shortest first
    assert gen.stats["new_tokens"] == sum(lengths)


def test_budget_and_context_stop_the_answer():
    tok = tokenizer()
    gen = Generator(fitted_model(), tok, greedy(max_new_tokens=5))
    (res,) = gen.generate([build_prompt(FITTED[0][0], tok)])
    assert res.stop == "length" and len(res.new_ids) == 5
    rec, answer = answer_record(res, tok)
    assert "token budget" in answer.notes[-1]
    model = tiny_llama(len(tok), seed=3, max_positions=100)
    gen = Generator(model, tok, greedy(max_new_tokens=50, min_new_tokens=50))
    prompt = build_prompt({"id": "x", "text": "Hello there."}, tok)
    (res,) = gen.generate([prompt])
    assert res.stop == "context" and len(prompt.ids) + len(res.new_ids) == 100


def test_same_seed_same_answer_whatever_the_batch():
    tok = tokenizer()
    model = tiny_llama(len(tok), seed=3)
    records = [{"id": f"q{i}", "text": f"Question number {i}?"} for i in range(3)]
    s = dict(max_new_tokens=15, min_new_tokens=15)
    a = run(Generator(model, tok, Sampling(seed=7, **s), batch_size=3), records)
    b = run(Generator(model, tok, Sampling(seed=7, **s), batch_size=1), records[::-1])
    c = run(Generator(model, tok, Sampling(seed=8, **s), batch_size=3), records)
    assert {k: v["raw"] for k, v in a.items()} == {k: v["raw"] for k, v in b.items()}
    assert any(a[k]["raw"] != c[k]["raw"] for k in a)
    g = run(Generator(model, tok, greedy(**s)), records)
    assert any(a[k]["raw"] != g[k]["raw"] for k in a)


def test_sampling_filters_keep_top_k_and_nucleus():
    tok = tokenizer()
    gen = Generator(tiny_llama(len(tok)), tok, Sampling(top_k=3, top_p=0.5, temperature=1.0))
    logits = torch.full((1, len(tok)), -10.0)
    logits[0, 100], logits[0, 101], logits[0, 102], logits[0, 103] = 5.0, 4.9, 4.8, 4.7
    row = _Row(Prompt({"id": "x"}, "chat", [1]), torch.Generator(), 100, [0] * 20)
    seen = set()
    for s in range(200):
        row.generator.manual_seed(s)
        seen.add(int(gen._choose(logits.clone(), [row])[0]))
    assert seen == {100, 101}  # top-p 0.5 keeps the two most likely of the top 3
    # min_new_tokens: EOS is never chosen before it, per row
    logits = torch.zeros((2, len(tok)))
    logits[:, tok.eos_id] = 100.0
    young = _Row(Prompt({"id": "y"}, "chat", [1]), torch.Generator(), 100, [0] * 9)
    chosen = gen._choose(logits.clone(), [young, row]).tolist()
    assert chosen[0] != tok.eos_id and chosen[1] == tok.eos_id


def test_finished_rows_make_room_for_waiting_prompts():
    tok = tokenizer()
    records = [r for r, _ in FITTED] * 2
    records = [{**r, "id": f"{r['id']}-{i}"} for i, r in enumerate(records)]
    prompts = [build_prompt(r, tok) for r in records]
    alone = Generator(fitted_model(), tok, greedy(max_new_tokens=40), batch_size=1)
    want = {res.prompt.id: res.new_ids for res in alone.generate(prompts)}
    shared = Generator(fitted_model(), tok, greedy(max_new_tokens=40), batch_size=3)
    got = {res.prompt.id: res.new_ids for res in shared.generate(prompts)}
    assert got == want
    # rows joined running batches: far fewer passes than one batch of 3 after another
    assert shared.stats["forward_passes"] < alone.stats["forward_passes"] / 2


def test_a_slow_producer_gets_each_answer_before_sending_the_next():
    tok = tokenizer()
    gen = Generator(fitted_model(), tok, greedy(max_new_tokens=40), batch_size=8)
    answered: list[str] = []

    def producer():
        for record, _ in FITTED[:3]:
            # the previous answer is out before this prompt is even made
            assert len(answered) == FITTED.index((record, _))
            yield build_prompt(record, tok)
            while len(answered) < FITTED.index((record, _)) + 1:
                time.sleep(0.01)

    for res in gen.generate(producer()):
        answered.append(res.prompt.id)
    assert answered == ["t2s", "s2s", "asr"]


def test_prompt_dataclass_id():
    assert Prompt({"id": "z"}, "chat", [1]).id == "z"


def test_an_error_reading_prompts_comes_after_the_running_answers():
    tok = tokenizer()
    gen = Generator(tiny_llama(len(tok), seed=3), tok, greedy(max_new_tokens=4))

    def prompts():
        yield build_prompt({"id": "first", "text": "Hello there."}, tok)
        raise RecordError("second", "bad")  # what --strict raises at a bad record

    got = []
    with pytest.raises(RecordError, match="second: bad"):
        for res in gen.generate(prompts()):
            got.append(res.prompt.id)
    assert got == ["first"]


def test_padded_vocabulary_rows_are_never_chosen():
    tok = tokenizer()
    model = tiny_llama(len(tok) + 8, seed=3)  # embeddings padded past the tokenizer
    with torch.no_grad():
        model.lm_head.weight[len(tok):] = model.lm_head.weight[:8] * 100
    for sampling in (greedy(max_new_tokens=6), Sampling(max_new_tokens=6)):
        gen = Generator(model, tok, sampling)
        (res,) = gen.generate([build_prompt({"id": "p", "text": "Hello there."}, tok)])
        assert len(res.new_ids) == 6 and max(res.new_ids) < len(tok)
