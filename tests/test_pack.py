"""Packing: ids and loss masks as the reference's training scripts make them, round trips,
determinism, shards, and resuming an interrupted run."""

import json
import random

import numpy as np
import pytest
from fakes.tokenizers import extended, random_sentence, random_units

import sgpt.tokenize.pack as pack_module
from sgpt.lm.prompts import MODES, units_text
from sgpt.lm.tokenizer import SpeechTokenizer
from sgpt.tokenize.instruct import chain_of_modality_examples, cross_modal_examples
from sgpt.tokenize.pack import Inputs, PackConfig, PackedDataset, Packer, PackError


@pytest.fixture(scope="module")
def llama():
    return SpeechTokenizer.from_dir(str(extended("llama", "reference")))


@pytest.fixture(scope="module")
def llama_plain():
    return SpeechTokenizer.from_dir(str(extended("llama", "plain")))


@pytest.fixture(scope="module")
def smol():
    return SpeechTokenizer.from_dir(str(extended("smollm2", "plain")))


def instruct_records(n: int = 60, seed: int = 0, high: int = 150) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2:
            rec = {"id": f"u{i}", "units": random_units(rng, high=high),
                   "text": random_sentence(rng)}
            out += cross_modal_examples(rec, 1000, seed=i)
        else:
            quad = {"id": f"q{i}", "question_text": random_sentence(rng),
                    "answer_text": random_sentence(rng),
                    "question_units": random_units(rng, high=high),
                    "answer_units": random_units(rng, high=high)}
            out += chain_of_modality_examples(quad, 1000, [MODES[i % 4]])
    return out


def write_jsonl(path, records, with_ids=True):
    with open(path, "w") as f:
        for r in records:
            if not with_ids:
                r = {k: v for k, v in r.items() if k != "id"}
            f.write(json.dumps(r) + "\n")
    return path


def run_pack(tok, out, sources, config=None, shard=(0, 1)):
    errors = []
    data = Inputs([str(s) for s in sources])
    select = range(round(data.count() * shard[0] / shard[1]),
                   round(data.count() * (shard[0] + 1) / shard[1]))
    header = Packer(tok, str(out), config or PackConfig(), shard,
                    lambda w, r: errors.append((w, r))).run(data, select)
    data.close()
    return header, errors


def reference_sft(hf, prefix, plain_text, max_length):
    """cm_sft.py's generate_and_tokenize_prompt, with its tokenize(), verbatim in logic."""
    def tokenize(prompt, add_eos_token=True):
        result = hf(prompt, truncation=True, max_length=max_length, padding=False)
        ids = list(result["input_ids"])
        if ids[-1] != hf.eos_token_id and len(ids) < max_length and add_eos_token:
            ids.append(hf.eos_token_id)
        return ids

    full = tokenize(prefix + plain_text)
    user_len = len(tokenize(prefix, add_eos_token=False))
    labels = [-100] * user_len + full[user_len:]
    return full, labels


@pytest.mark.parametrize("name", ["llama", "smol"])
def test_instruct_pack_matches_the_reference_procedure(name, request, tmp_path):
    tok = request.getfixturevalue(name)
    records = instruct_records()
    src = write_jsonl(tmp_path / "s2.jsonl", records)
    header, errors = run_pack(tok, tmp_path / "p", [src], PackConfig(max_length=160))
    assert not errors and header["stage"] == "2" and header["truncated"] > 0
    ds = PackedDataset(str(tmp_path / "p"))
    assert len(ds) == len(records)
    for i, rec in enumerate(records):
        ids, mask = ds[i]
        full, labels = reference_sft(tok.hf, rec["prefix"], rec["plain_text"], 160)
        assert ids.tolist() == full, rec["id"]
        assert mask.tolist() == [int(label != -100) for label in labels], rec["id"]
        assert ds.name(i) == rec["id"]


def test_stage1_blocks_match_the_reference_group_texts(llama, tmp_path):
    rng = random.Random(1)
    lines = [units_text(random_units(rng, high=90)) for _ in range(80)]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    header, errors = run_pack(llama, tmp_path / "p", [tmp_path / "train.txt"],
                              PackConfig(block_size=64))
    assert not errors and header["stage"] == "1"
    stream = [t for ids in llama.hf(lines)["input_ids"] for t in ids]  # BOS per line
    n = len(stream) // 64
    ds = PackedDataset(str(tmp_path / "p"))
    assert len(ds) == n and header["dropped_tail_tokens"] == len(stream) - 64 * n
    blocks = [ds[i] for i in range(len(ds))]
    assert [b.tolist() for b, _ in blocks] == [stream[i * 64:(i + 1) * 64] for i in range(n)]
    assert all(m.all() for _, m in blocks)
    assert ds.name(0) is None


def test_unit_records_pack_like_their_lines(llama, tmp_path):
    rng = random.Random(2)
    units = [random_units(rng) for _ in range(30)]
    write_jsonl(tmp_path / "u.jsonl", [{"id": f"u{i}", "units": u} for i, u in enumerate(units)])
    (tmp_path / "u.txt").write_text("".join(units_text(u) + "\n" for u in units))
    run_pack(llama, tmp_path / "a", [tmp_path / "u.jsonl"], PackConfig(block_size=50))
    run_pack(llama, tmp_path / "b", [tmp_path / "u.txt"], PackConfig(block_size=50))
    a, b = PackedDataset(str(tmp_path / "a")), PackedDataset(str(tmp_path / "b"))
    assert len(a) == len(b) > 0
    assert all((a[i][0] == b[i][0]).all() for i in range(len(a)))


def test_smollm2_stage1_separates_utterances(smol, tmp_path):
    (tmp_path / "t.txt").write_text("<sosp><1><2><eosp>\n<sosp><3><eosp>\n")
    run_pack(smol, tmp_path / "p", [tmp_path / "t.txt"], PackConfig(block_size=4))
    ds = PackedDataset(str(tmp_path / "p"))
    sosp, eosp, u = smol.markers["<sosp>"], smol.markers["<eosp>"], smol.unit_ids
    bos = smol.bos_id  # SmolLM2 adds no special tokens: its BOS separates utterances
    assert ds[0][0].tolist() == [bos, sosp, u[1], u[2]]
    assert ds[1][0].tolist() == [eosp, bos, sosp, u[3]]


def test_train_on_inputs_false_masks_the_human_turn(llama, tmp_path):
    records = instruct_records(12)
    src = write_jsonl(tmp_path / "s.jsonl", records)
    run_pack(llama, tmp_path / "p", [src], PackConfig(train_on_inputs=False, max_length=4096))
    ds = PackedDataset(str(tmp_path / "p"))
    speechgpt = llama.markers["[SpeechGPT]"]
    for i in range(len(ds)):
        ids, mask = ds[i]
        turn = int(np.flatnonzero(ids == speechgpt)[0])
        assert not mask[:turn + 1].any() and mask[turn + 1:].all()
        assert ids[-1] == llama.eos_id


def test_overlong_drop(llama, tmp_path):
    records = instruct_records(20)
    src = write_jsonl(tmp_path / "s.jsonl", records)
    header, _ = run_pack(llama, tmp_path / "p", [src], PackConfig(max_length=200,
                                                                  overlong="drop"))
    ds = PackedDataset(str(tmp_path / "p"))
    assert header["dropped"] > 0 and len(ds) == len(records) - header["dropped"]
    assert all(len(ds[i][0]) <= 200 for i in range(len(ds)))


def test_round_trip_pack_decode_gives_the_text(llama_plain, tmp_path):
    records = instruct_records(30)
    src = write_jsonl(tmp_path / "s.jsonl", records)
    run_pack(llama_plain, tmp_path / "p", [src], PackConfig(max_length=100_000))
    ds = PackedDataset(str(tmp_path / "p"))
    for i, rec in enumerate(records):
        ids, _ = ds[i]
        assert ids[0] == llama_plain.bos_id and ids[-1] == llama_plain.eos_id
        assert llama_plain.decode(ids[1:-1]) == rec["prefix"] + rec["plain_text"]


def test_stage1_round_trip(llama_plain, tmp_path):
    rng = random.Random(3)
    lines = [units_text(random_units(rng, high=40)) for _ in range(40)]
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n")
    run_pack(llama_plain, tmp_path / "p", [tmp_path / "t.txt"], PackConfig(block_size=32))
    ds = PackedDataset(str(tmp_path / "p"))
    text = llama_plain.decode(np.concatenate([ds[i][0] for i in range(len(ds))]))
    decoded = [t for t in text.split("<s>") if t]
    assert decoded[:-1] == lines[:len(decoded) - 1]  # the last one may be cut by the drop
    assert lines[len(decoded) - 1].startswith(decoded[-1])


def test_published_records_without_ids(llama, tmp_path):
    records = instruct_records(4)
    src = write_jsonl(tmp_path / "cross_modal_instruction.jsonl", records, with_ids=False)
    run_pack(llama, tmp_path / "p", [src])
    ds = PackedDataset(str(tmp_path / "p"))
    assert [ds.name(i) for i in range(len(ds))] == [
        f"cross_modal_instruction_{n}" for n in range(1, len(records) + 1)]


def test_bad_records_are_named_and_the_good_packed(llama, tmp_path):
    good = instruct_records(3)[:3]
    lines = [json.dumps(good[0]),
             json.dumps({"id": "big", "prefix": "P", "plain_text": "[Human]: <sosp><1000><eosp>"}),
             json.dumps({"id": "empty", "prefix": "P", "plain_text": "x <sosp><eosp>"}),
             json.dumps({"id": "noprefix", "plain_text": "hello"}),
             json.dumps({"id": "nums", "prefix": 3, "plain_text": "x"}),
             '{"id": "broken", "prefix": ',
             json.dumps(good[1]),
             json.dumps({"id": "s1", "units": [1, 2]}),
             json.dumps({"id": "nothing"}),
             json.dumps(good[2])]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    header, errors = run_pack(llama, tmp_path / "p", [tmp_path / "d.jsonl"])
    line6 = f"{tmp_path / 'd.jsonl'}:6"
    assert [w for w, _ in errors] == ["big", "empty", "noprefix", "nums", line6, "s1",
                                      "nothing"]
    reasons = dict(errors)
    assert "unit 1000 is outside 0..999" in reasons["big"]
    assert "empty units" in reasons["empty"]
    assert "no 'prefix' key" in reasons["noprefix"]
    assert "malformed JSON" in reasons[line6]
    assert "stage-1" in reasons["s1"]
    assert header["failed"] == 7 and header["sequences"] == 3
    ds = PackedDataset(str(tmp_path / "p"))
    assert [ds.name(i) for i in range(3)] == [g["id"] for g in good]


def test_same_inputs_same_bytes(llama, tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", instruct_records(20))
    run_pack(llama, tmp_path / "a", [src])
    run_pack(llama, tmp_path / "b", [src])
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len(files) == 5
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_shards_together_are_the_whole(llama, tmp_path):
    records = instruct_records(25)
    src = write_jsonl(tmp_path / "s.jsonl", records)
    run_pack(llama, tmp_path / "whole", [src])
    for i in range(3):
        with pytest.raises(PackError, match="not finished|no finished part"):
            PackedDataset(str(tmp_path / "sharded"))
        run_pack(llama, tmp_path / "sharded", [src], shard=(i, 3))
    whole = PackedDataset(str(tmp_path / "whole"))
    sharded = PackedDataset(str(tmp_path / "sharded"))
    assert len(whole) == len(sharded) == len(records)
    for i in range(len(whole)):
        assert (whole[i][0] == sharded[i][0]).all() and (whole[i][1] == sharded[i][1]).all()
        assert whole.name(i) == sharded.name(i)


@pytest.mark.parametrize("stage", ["1", "2"])
def test_an_interrupted_run_resumes_to_the_same_bytes(llama, tmp_path, monkeypatch, stage):
    monkeypatch.setattr(pack_module, "BATCH", 4)
    monkeypatch.setattr(pack_module, "COMMIT_EVERY", 8)
    if stage == "2":
        records = instruct_records(30)
        records[5] = {"id": "bad", "prefix": "P"}  # its error is reported again on resume
        src = write_jsonl(tmp_path / "s.jsonl", records)
    else:
        rng = random.Random(4)
        src = tmp_path / "s.txt"
        src.write_text("".join(units_text(random_units(rng)) + "\n" for _ in range(50)))
    config = PackConfig(block_size=40)
    _, errors = run_pack(llama, tmp_path / "whole", [src], config)

    real_batch, calls = Packer._batch, []

    def dying_batch(self, *args):
        calls.append(1)
        if len(calls) == 6:  # after a commit (at 8 records) and some uncommitted batches
            raise KeyboardInterrupt
        return real_batch(self, *args)

    monkeypatch.setattr(Packer, "_batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        run_pack(llama, tmp_path / "resumed", [src], config)
    assert not (tmp_path / "resumed" / "part-00000-of-00001.json").exists()
    assert (tmp_path / "resumed" / "part-00000-of-00001.progress.json").exists()
    monkeypatch.setattr(Packer, "_batch", real_batch)
    _, resumed_errors = run_pack(llama, tmp_path / "resumed", [src], config)
    assert resumed_errors == errors
    for p in (tmp_path / "whole").iterdir():
        assert (tmp_path / "resumed" / p.name).read_bytes() == p.read_bytes(), p.name
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == \
        sorted(p.name for p in (tmp_path / "whole").iterdir())
    # a finished part is not packed again
    header, _ = run_pack(llama, tmp_path / "resumed", [src], config)
    assert header["sequences"] == PackedDataset(str(tmp_path / "whole")).header["sequences"]


def test_resume_refuses_other_settings(llama, tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "s.jsonl", instruct_records(10))
    monkeypatch.setattr(pack_module, "BATCH", 2)

    def die(self, *args):
        raise KeyboardInterrupt

    real = Packer._batch
    monkeypatch.setattr(Packer, "_batch", die)
    with pytest.raises(KeyboardInterrupt):
        run_pack(llama, tmp_path / "p", [src])
    monkeypatch.setattr(Packer, "_batch", real)
    with pytest.raises(PackError, match="other inputs or settings"):
        run_pack(llama, tmp_path / "p", [src], PackConfig(max_length=99))


def test_a_finished_part_is_kept_only_for_the_same_inputs_and_settings(llama, tmp_path):
    """A re-run keeps a finished part; after its input or settings changed it refuses by
    name rather than keep shards of the old data (a Makefile re-packing changed data)."""
    src = write_jsonl(tmp_path / "s.jsonl", instruct_records(6))
    first, _ = run_pack(llama, tmp_path / "p", [src])
    assert first["input_bytes"] == [src.stat().st_size]
    again, _ = run_pack(llama, tmp_path / "p", [src])
    assert again == first
    write_jsonl(src, instruct_records(8))
    with pytest.raises(PackError, match=r"part-00000-of-00001.json: a part made from other "
                                        r"inputs or settings \(input_bytes\)"):
        run_pack(llama, tmp_path / "p", [src])
    with pytest.raises(PackError, match=r"\(config, input_bytes\)"):
        run_pack(llama, tmp_path / "p", [src], PackConfig(max_length=99))
    old = json.loads((tmp_path / "p" / "part-00000-of-00001.json").read_text())
    del old["input_bytes"]  # a header written before sizes were recorded: names and settings
    (tmp_path / "p" / "part-00000-of-00001.json").write_text(json.dumps(old))
    assert run_pack(llama, tmp_path / "p", [src])[0] == old


def test_header_names_the_tokenizer(llama, tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", instruct_records(2))
    header, _ = run_pack(llama, tmp_path / "p", [src])
    tok = header["tokenizer"]
    assert tok["path"] == str(extended("llama", "reference"))
    assert tok["size"] == 3006 and tok["k"] == 1000 and len(tok["fingerprint"]) == 64
    assert header["dtype"] == "uint16" and header["settings"]["max_length"] == 512
    ds = PackedDataset(str(tmp_path / "p"))
    assert isinstance(ds[0][0], np.memmap) and ds.tokens == header["tokens"]


def test_config_is_checked():
    with pytest.raises(PackError):
        PackConfig(stage="4").check()
    with pytest.raises(PackError):
        PackConfig(block_size=1).check()
