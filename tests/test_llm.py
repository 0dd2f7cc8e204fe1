"""Loading the LLM: resizing to the extended vocabulary (mean init, ties kept), sgpt model
directories (full and adapter), published layouts (plain directory + separate adapter)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import transformers
from fakes.tokenizers import extended, llama_base

from sgpt.core.errors import CheckpointError
from sgpt.lm.models import (
    MODEL_META,
    copy_tokenizer,
    embeddings_tied,
    load_causal_lm,
    load_model_dir,
    model_meta,
    resize_embeddings,
    save_model_dir,
    vocab_rows,
)
from sgpt.lm.tokenizer import SpeechTokenizer


def tiny_llama(vocab_size: int = 2000, tied: bool = True, seed: int = 0):
    """A real ``LlamaForCausalLM`` with a tiny config and random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=tied,
                         bos_token_id=1, eos_token_id=2, pad_token_id=None,
                         initializer_range=0.3)  # logits with room to move, as trained ones
    model = LlamaForCausalLM(config)
    return model.eval()


def tiny_llama_dir(path, tied: bool = True, seed: int = 0, tokenizer=None):
    """A base model directory as LLaMA's HF conversion lays it out: weights + tokenizer."""
    model = tiny_llama(tied=tied, seed=seed)
    model.save_pretrained(str(path), safe_serialization=True)
    copy_tokenizer(str(tokenizer or llama_base()), path)
    return path


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("tied", [True, False])
def test_resize_mean_init_keeps_ties(tied):
    model = tiny_llama(tied=tied)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    new = resize_embeddings(model, 2010)
    assert new == list(range(2000, 2010))
    assert vocab_rows(model) == 2010 and model.config.vocab_size == 2010
    w_in = model.get_input_embeddings().weight
    w_out = model.get_output_embeddings().weight
    assert torch.equal(w_in[:2000], before_in)
    assert torch.allclose(w_in[2000:], before_in.mean(0).expand(10, -1))
    assert embeddings_tied(model) == tied
    if not tied:
        assert torch.allclose(w_out[2000:], before_out.mean(0).expand(10, -1))
        assert torch.equal(w_out[:2000], before_out)
    # deterministic: a second base resized the same way is the same model
    other = tiny_llama(tied=tied)
    resize_embeddings(other, 2010)
    assert torch.equal(logits(model, [1, 5, 2005]), logits(other, [1, 5, 2005]))
    # old tokens' logits do not change, the new tokens' logits are all equal
    assert resize_embeddings(model, 2010) == [] and resize_embeddings(model, 100) == []


def test_load_dir_resizes_and_names_bad_paths(tmp_path):
    base = tiny_llama_dir(tmp_path / "base")
    model = load_causal_lm(str(base), vocab_size=3006)
    assert vocab_rows(model) == 3006 and embeddings_tied(model)
    ref = tiny_llama()
    assert torch.allclose(logits(model, [1, 7, 9])[:, :2000], logits(ref, [1, 7, 9]),
                          atol=1e-5)
    for bad, what in [(tmp_path / "nope", "no such model directory"),
                      (tmp_path / "x.gguf", "no such GGUF file"),
                      (tmp_path, "no config.json")]:
        with pytest.raises(CheckpointError, match=what) as e:
            load_causal_lm(str(bad))
        assert str(bad) in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="broken"):
        load_causal_lm(str(tmp_path / "broken"))


def test_full_model_dir_round_trip(tmp_path):
    tok = extended("llama", "reference")
    size = len(SpeechTokenizer.from_dir(str(tok)))
    model = load_causal_lm(str(tiny_llama_dir(tmp_path / "base")), vocab_size=size)
    meta = model_meta("cross-modal", 1000, False, str(tmp_path / "base"), size)
    save_model_dir(tmp_path / "out", model, meta, str(tok), {"train_config.yaml": "a: 1\n"})
    loaded, got = load_model_dir(str(tmp_path / "out"))
    assert got == meta and got["stage"] == "cross-modal"
    ids = [1, 40, 2000, 2999, 3005]
    assert torch.allclose(logits(loaded, ids), logits(model, ids), atol=1e-6)
    assert embeddings_tied(loaded)
    assert SpeechTokenizer.from_dir(str(tmp_path / "out")).k == 1000
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", MODEL_META, "train_config.yaml",
            "sgpt_tokenizer.json", "tokenizer_config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    umask = os.umask(0)
    os.umask(umask)
    for name in (MODEL_META, "model.safetensors", "tokenizer_config.json"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def _lora(model, new_rows, seed=0):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                        trainable_token_indices=new_rows or None)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():  # as if trained: LoRA B and the new rows move away from their init
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    return peft_model.eval()


@pytest.mark.parametrize("tied", [True, False])
def test_adapter_dir_loads_on_resized_base(tmp_path, tied):
    tok = extended("llama", "reference")
    size = len(SpeechTokenizer.from_dir(str(tok)))
    base = tiny_llama_dir(tmp_path / "base", tied=tied)
    model = load_causal_lm(str(base), vocab_size=size)
    new_rows = list(range(2000, size))
    if not tied:
        new_rows = {"embed_tokens": new_rows, "lm_head": new_rows}
    peft_model = _lora(model, new_rows)
    ids = [1, 40, 2000, 2500, 3005, 7]
    expected = logits(peft_model, ids)
    meta = model_meta("chain-of-modality", 1000, True, str(base), size)
    save_model_dir(tmp_path / "out", peft_model, meta, str(tok))
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "model.safetensors" not in files and "README.md" not in files
    # the adapter carries only LoRA and the new rows: far smaller than the model
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), "pt") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    assert not any(s[0] == size for s in shapes.values()), shapes
    assert sum(s[0] == size - 2000 for s in shapes.values()) == (1 if tied else 2)
    loaded, got = load_model_dir(str(tmp_path / "out"))
    assert got["adapter"] and got["base_model"] == str(base)
    assert torch.allclose(logits(loaded, ids), expected, atol=1e-4)
    # a stage-3 adapter over it can also load it as a base (merged)
    again = load_causal_lm(str(tmp_path / "out"))
    assert torch.allclose(logits(again, ids), expected, atol=1e-4)


def test_published_layout_plain_dir_plus_adapter(tmp_path):
    """SpeechGPT-7B-cm (a plain directory with the extended tokenizer) + -com (an adapter)."""
    tok = extended("llama", "reference")
    size = len(SpeechTokenizer.from_dir(str(tok)))
    cm = load_causal_lm(str(tiny_llama_dir(tmp_path / "base")), vocab_size=size)
    cm.save_pretrained(str(tmp_path / "cm"), safe_serialization=True)
    copy_tokenizer(str(tok), tmp_path / "cm")
    (tmp_path / "cm" / "sgpt_tokenizer.json").unlink()  # published dirs do not have it
    peft_model = _lora(cm, None)
    ids = [1, 2001, 2002, 9]
    expected = logits(peft_model, ids)
    peft_model.save_pretrained(str(tmp_path / "com"), safe_serialization=True,
                               save_embedding_layers=False)
    model, meta = load_model_dir(str(tmp_path / "cm"))
    assert meta["k"] == 1000 and meta["stage"] is None and not meta["adapter"]
    model, meta = load_model_dir(str(tmp_path / "cm"), adapter=str(tmp_path / "com"))
    assert meta["adapter"]
    assert torch.allclose(logits(model, ids), expected, atol=1e-4)
    with pytest.raises(CheckpointError, match="not a PEFT adapter"):
        load_model_dir(str(tmp_path / "cm"), adapter=str(tmp_path / "base"))


def test_bad_model_dirs(tmp_path):
    tok = extended("llama", "reference")
    base = tiny_llama_dir(tmp_path / "base")
    model = load_causal_lm(str(base), vocab_size=3006)
    meta = model_meta("chain-of-modality", 1000, True, str(tmp_path / "gone"), 3006)
    peft_model = _lora(model, list(range(2000, 3006)))
    save_model_dir(tmp_path / "out", peft_model, meta, str(tok))
    with pytest.raises(CheckpointError, match="base model .*gone.* is not there"):
        load_model_dir(str(tmp_path / "out"))
    (tmp_path / "out" / MODEL_META).write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not an sgpt model description"):
        load_model_dir(str(tmp_path / "out"))
    with pytest.raises(CheckpointError, match="no such model directory"):
        load_model_dir(str(tmp_path / "missing"))
    # an adapter config without peft's keys: named, with the key
    meta["base_model"] = str(base)
    (tmp_path / "out" / MODEL_META).write_text(json.dumps(meta))
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    del config["peft_type"]
    (tmp_path / "out" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="adapter_config.json: no 'peft_type' key"):
        load_model_dir(str(tmp_path / "out"))


def _permute(w, n_head):
    """llama.cpp's row order for q/k projections (its rotary embedding pairs neighbours)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def tiny_llama_gguf(model, path):
    """``model`` as llama.cpp's convert script writes a LLaMA: GGUF names, permuted q/k, f32."""
    gguf = pytest.importorskip("gguf")
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_q.weight",
                     _permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight",
                     _permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads))
        for ours, theirs in names.items():
            w.add_tensor(f"blk.{i}.{theirs}.weight", sd[p + ours + ".weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not c.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_gguf_base_is_dequantized_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SGPT_CACHE", str(tmp_path / "cache"))
    model = tiny_llama(tied=True)
    path = tiny_llama_gguf(model, tmp_path / "tiny.gguf")
    first = load_causal_lm(str(path))
    (entry,) = (tmp_path / "cache" / "gguf").iterdir()
    manifest = json.loads((entry / "sgpt_cache.json").read_text())
    assert entry.name.endswith("-float32") and manifest["gguf"] == "tiny.gguf"
    assert manifest["transformers"] == transformers.__version__
    # the second load reads the cache: it works with GGUF reading made impossible
    monkeypatch.setitem(sys.modules, "gguf", None)
    again = load_causal_lm(str(path))
    ids = [1, 5, 9, 1999]
    assert torch.equal(logits(again, ids), logits(first, ids)) and embeddings_tied(again)
    for name, t in first.state_dict().items():
        assert torch.equal(again.state_dict()[name], t), name
    monkeypatch.delitem(sys.modules, "gguf")
    # a truncated entry is made again, never loaded
    weights = entry / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    assert torch.equal(logits(load_causal_lm(str(path)), ids), logits(first, ids))
    assert weights.stat().st_size == size
    # another dtype, another entry; another GGUF file (same name), another entry
    load_causal_lm(str(path), dtype=torch.bfloat16)
    tiny_llama_gguf(tiny_llama(tied=True, seed=1), path)
    changed = load_causal_lm(str(path))
    assert not torch.equal(logits(changed, ids), logits(first, ids))
    names = sorted(p.name.split("-")[1] for p in (tmp_path / "cache" / "gguf").iterdir())
    assert names == ["bfloat16", "float32", "float32"]
    assert not [p for p in (tmp_path / "cache" / "gguf").iterdir() if p.name.startswith(".")]


def test_an_adapter_over_a_gguf_base_is_merged_once_then_read_from_the_cache(tmp_path,
                                                                             monkeypatch):
    import sgpt.lm.models as models

    monkeypatch.setenv("SGPT_CACHE", str(tmp_path / "cache"))
    tok = extended("llama", "reference")
    size = len(SpeechTokenizer.from_dir(str(tok)))
    gguf = tiny_llama_gguf(tiny_llama(tied=True), tmp_path / "base.gguf")
    peft_model = _lora(load_causal_lm(str(gguf), vocab_size=size), list(range(2000, size)))
    ids = [1, 40, 2000, 2500, 3005, 7]
    expected = logits(peft_model, ids)
    save_model_dir(tmp_path / "out", peft_model,
                   model_meta("chain-of-modality", 1000, True, str(gguf), size), str(tok))
    first, _ = load_model_dir(str(tmp_path / "out"))
    assert torch.allclose(logits(first, ids), expected, atol=1e-4)
    assert len(list((tmp_path / "cache" / "merged").iterdir())) == 1

    def no_merging(*args, **kwargs):
        raise AssertionError("the adapter was merged again")

    monkeypatch.setattr(models, "_apply_adapter", no_merging)
    again, meta = load_model_dir(str(tmp_path / "out"))
    assert meta["adapter"] and torch.equal(logits(again, ids), logits(first, ids))
    # another adapter (its weights changed) is merged anew
    monkeypatch.undo()
    monkeypatch.setenv("SGPT_CACHE", str(tmp_path / "cache"))
    save_model_dir(tmp_path / "out", _lora(load_causal_lm(str(gguf), vocab_size=size),
                                           list(range(2000, size)), seed=1),
                   model_meta("chain-of-modality", 1000, True, str(gguf), size), str(tok))
    changed, _ = load_model_dir(str(tmp_path / "out"))
    assert not torch.allclose(logits(changed, ids), expected, atol=1e-4)
    assert len(list((tmp_path / "cache" / "merged").iterdir())) == 2


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_loads_as_the_model_it_was_written_from(tmp_path, tied):
    model = tiny_llama(tied=tied)
    path = tiny_llama_gguf(model, tmp_path / "tiny.gguf")
    loaded = load_causal_lm(str(path), vocab_size=2010)
    assert embeddings_tied(loaded) == tied and vocab_rows(loaded) == 2010
    assert getattr(loaded.config, "quantization_config", None) is None
    ids = [1, 5, 9, 1999]
    assert torch.allclose(logits(loaded, ids)[:, :2000], logits(model, ids), atol=1e-5)
    same, meta = load_model_dir(str(path))
    assert meta["base_model"] == str(path) and vocab_rows(same) == 2000

