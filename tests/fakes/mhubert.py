"""A fabricated mHuBERT checkpoint: the published file's layout, random weights, small sizes.

``mhubert_base_vp_en_es_fr_it3.pt`` is a fairseq (hydra era) training checkpoint written by
``torch.save`` with pickle protocol 2::

    {"args": None, "cfg": {plain dict: common, ..., model, task, criterion, ...},
     "model": OrderedDict(state dict), "criterion": None, "optimizer_history": [...],
     "task_state": {"dictionaries": [fairseq.data.dictionary.Dictionary]},
     "extra_state": {...}, "last_optimizer_state": {...}}

This module writes the same, with the real key names, the real conv kernel/stride structure
(320 samples a frame: 50 frames/s) and small widths. ``Dictionary`` is pickled under its
fairseq name by a stand-in class, so fairseq itself can load the file; we do not need it.
With ``legacy_args`` the configuration is a pre-hydra ``argparse.Namespace`` in ``args``.
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import types

import torch


def _stand_in(module: str, qualname: str) -> type:
    """A class pickled as ``module.qualname`` though it is not importable from there."""
    return type(qualname, (), {"__module__": module, "__qualname__": qualname})


Dictionary = _stand_in("fairseq.data.dictionary", "Dictionary")
_STAND_INS = {Dictionary}


class _Pickler(pickle._Pickler):
    """Writes the stand-in classes by their fairseq names (pickle would look them up)."""

    def save_global(self, obj, name=None):
        if obj in _STAND_INS:
            self.write(pickle.GLOBAL + f"{obj.__module__}\n{obj.__qualname__}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)


_PICKLE_MODULE = types.SimpleNamespace(__name__="fairseq_pickle", Pickler=_Pickler)


def conv_feature_layers(conv_dim: int) -> str:
    """fairseq's conv_feature_layers string: HuBERT-base's kernels and strides."""
    return f"[({conv_dim},10,5)] + [({conv_dim},3,2)] * 4 + [({conv_dim},2,2)] * 2"


def _dictionary(k: int) -> object:
    """fairseq's Dictionary of the k-means labels (``dict.km.txt``): 4 specials + k units."""
    d = Dictionary()
    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(k)]
    d.__dict__.update(
        bos_word="<s>", unk_word="<unk>", pad_word="<pad>", eos_word="</s>",
        symbols=symbols, count=[1, 1, 1, 1] + [1000 + i for i in range(k)],
        indices={s: i for i, s in enumerate(symbols)},
        bos_index=0, pad_index=1, eos_index=2, unk_index=3, nspecial=4,
    )
    return d


def _state_dict(n_layers: int, dim: int, ffn: int, conv_dim: int, conv_pos: int,
                conv_pos_groups: int, final_dim: int, n_labels: int, layer_norm_convs: bool,
                conv_bias: bool, gen: torch.Generator) -> collections.OrderedDict:
    """Random weights under HubertModel.state_dict()'s names, in its order."""

    def rand(*shape, scale=1.0, offset=0.0):
        return torch.randn(*shape, generator=gen) * scale + offset

    def linear(prefix, n_out, n_in):
        return {f"{prefix}.weight": rand(n_out, n_in, scale=n_in ** -0.5),
                f"{prefix}.bias": rand(n_out, scale=0.02)}

    def norm(prefix, n):
        return {f"{prefix}.weight": rand(n, scale=0.1, offset=1.0),
                f"{prefix}.bias": rand(n, scale=0.1)}

    sd = {"mask_emb": rand(dim).uniform_(generator=gen),
          "label_embs_concat": rand(n_labels, final_dim)}
    for i, (k, n_in) in enumerate([(10, 1)] + [(3, conv_dim)] * 4 + [(2, conv_dim)] * 2):
        prefix = f"feature_extractor.conv_layers.{i}"
        sd[f"{prefix}.0.weight"] = rand(conv_dim, n_in, k, scale=(2 / (n_in * k)) ** 0.5)
        if conv_bias:
            sd[f"{prefix}.0.bias"] = rand(conv_dim, scale=0.02)
        if layer_norm_convs:  # Sequential(conv, dropout, Sequential(T, LayerNorm, T), gelu)
            sd.update(norm(f"{prefix}.2.1", conv_dim))
        elif i == 0:  # Sequential(conv, dropout, GroupNorm, gelu)
            sd.update(norm(f"{prefix}.2", conv_dim))
    sd.update(linear("post_extract_proj", dim, conv_dim))
    v = rand(dim, dim // conv_pos_groups, conv_pos, scale=(4 / (conv_pos * dim)) ** 0.5)
    sd["encoder.pos_conv.0.bias"] = rand(dim, scale=0.02)
    sd["encoder.pos_conv.0.weight_g"] = v.norm(dim=(0, 1), keepdim=True) * rand(
        1, 1, conv_pos, scale=0.2, offset=1.0)  # weight = g * v / |v|, not v
    sd["encoder.pos_conv.0.weight_v"] = v
    for n in range(n_layers):
        p = f"encoder.layers.{n}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            sd.update(linear(f"{p}.self_attn.{proj}", dim, dim))
        sd.update(norm(f"{p}.self_attn_layer_norm", dim))
        sd.update(linear(f"{p}.fc1", ffn, dim))
        sd.update(linear(f"{p}.fc2", dim, ffn))
        sd.update(norm(f"{p}.final_layer_norm", dim))
    sd.update(norm("encoder.layer_norm", dim))
    sd.update(norm("layer_norm", conv_dim))
    sd.update(linear("final_proj", final_dim, dim))
    out = collections.OrderedDict(sd)
    prefixes = {""} | {k.rsplit(".", i)[0] for k in sd for i in range(1, k.count(".") + 1)}
    out._metadata = collections.OrderedDict((p, {"version": 1}) for p in sorted(prefixes))
    return out


def make_mhubert_checkpoint(path: str | os.PathLike, *, encoder_layers: int = 3,
                            embed_dim: int = 64, ffn_dim: int = 128, heads: int = 4,
                            conv_dim: int = 32, seed: int = 0, normalize: bool = False,
                            legacy_args: bool = False, k: int = 20, final_dim: int = 16,
                            large: bool = False) -> str | os.PathLike:
    """Write a checkpoint in the published mHuBERT layout at ``path``; return ``path``.

    ``large`` makes it HuBERT-large style: layer-norm conv extractor with conv biases,
    pre-LN transformer (``layer_norm_first``).
    """
    gen = torch.Generator().manual_seed(seed)
    conv_pos, conv_pos_groups = 128, 16
    model = {
        "_name": "hubert", "label_rate": 50.0,
        "extractor_mode": "layer_norm" if large else "default",
        "encoder_layers": encoder_layers, "encoder_embed_dim": embed_dim,
        "encoder_ffn_embed_dim": ffn_dim, "encoder_attention_heads": heads,
        "activation_fn": "gelu", "dropout": 0.1, "attention_dropout": 0.1,
        "activation_dropout": 0.0, "encoder_layerdrop": 0.05, "dropout_input": 0.1,
        "dropout_features": 0.1, "final_dim": final_dim, "untie_final_proj": False,
        "layer_norm_first": large, "conv_feature_layers": conv_feature_layers(conv_dim),
        "conv_bias": large, "logit_temp": 0.1, "target_glu": False, "feature_grad_mult": 0.1,
        "mask_length": 10, "mask_prob": 0.8, "mask_selection": "static", "mask_other": 0.0,
        "no_mask_overlap": False, "mask_min_space": 1, "mask_channel_length": 10,
        "mask_channel_prob": 0.0, "mask_channel_selection": "static",
        "mask_channel_other": 0.0, "no_mask_channel_overlap": False,
        "mask_channel_min_space": 1, "conv_pos": conv_pos, "conv_pos_groups": conv_pos_groups,
        "latent_temp": [2.0, 0.5, 0.999995], "skip_masked": False, "skip_nomask": False,
        "checkpoint_activations": False, "required_seq_len_multiple": 2,
    }
    task = {
        "_name": "hubert_pretraining", "data": "/checkpoint/mhubert/manifests",
        "fine_tuning": False, "labels": ["km"], "label_dir": "/checkpoint/mhubert/labels_it2",
        "label_rate": 50.0, "sample_rate": 16000, "normalize": normalize,
        "enable_padding": False, "max_keep_size": None, "max_sample_size": 250000,
        "min_sample_size": 32000, "single_target": False, "random_crop": True,
        "pad_audio": False,
    }
    cfg = {
        "_name": None,
        "common": {"_name": None, "no_progress_bar": False, "log_interval": 200,
                   "log_format": "json", "seed": 1337, "cpu": False, "fp16": True,
                   "memory_efficient_fp16": False, "fp16_init_scale": 128},
        "common_eval": {"_name": None, "path": None, "post_process": None, "quiet": False},
        "distributed_training": {"_name": None, "distributed_world_size": 32,
                                 "distributed_backend": "nccl", "ddp_backend": "no_c10d"},
        "dataset": {"_name": None, "num_workers": 6, "max_tokens": 1400000,
                    "train_subset": "train", "valid_subset": "valid"},
        "optimization": {"_name": None, "max_epoch": 0, "max_update": 400000,
                         "clip_norm": 10.0, "update_freq": [1], "lr": [0.0005]},
        "checkpoint": {"_name": None, "save_dir": "checkpoints", "save_interval": 1,
                       "save_interval_updates": 25000, "keep_interval_updates": 1},
        "bmuf": {"_name": None, "block_lr": 1.0, "block_momentum": 0.875},
        "generation": {"_name": None, "beam": 5, "print_alignment": None},
        "eval_lm": {"_name": None, "output_word_probs": False},
        "interactive": {"_name": None, "buffer_size": 0, "input": "-"},
        "model": model,
        "task": task,
        "criterion": {"_name": "hubert", "pred_masked_weight": 1.0, "pred_nomask_weight": 0.0,
                      "loss_weights": [10.0], "log_keys": []},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-06,
                      "weight_decay": 0.01, "use_old_adam": False, "lr": [0.0005]},
        "lr_scheduler": {"_name": "polynomial_decay", "warmup_updates": 32000,
                         "force_anneal": None, "end_learning_rate": 0.0, "power": 1.0,
                         "total_num_update": 400000.0, "lr": [0.0005]},
        "scoring": None, "bpe": None, "tokenizer": None,
    }
    weights = _state_dict(encoder_layers, embed_dim, ffn_dim, conv_dim, conv_pos,
                          conv_pos_groups, final_dim, 4 + k, large, large, gen)
    adam = {"state": {i: {"step": 400000, "exp_avg": torch.zeros_like(w),
                          "exp_avg_sq": torch.zeros_like(w)}
                      for i, w in enumerate(weights.values())},
            "param_groups": [{"lr": 0.0, "betas": (0.9, 0.98), "eps": 1e-06,
                              "weight_decay": 0.01, "amsgrad": False,
                              "params": list(range(len(weights)))}],
            "loss_scale": 16.0}
    args = None
    if legacy_args:
        args = argparse.Namespace(arch="hubert", task="hubert_pretraining", criterion="hubert",
                                  **{k: v for k, v in {**task, **model}.items() if k != "_name"})
        cfg = None
    state = {
        "args": args,
        "cfg": cfg,
        "model": weights,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "HubertCriterion",
                               "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": 3.27},
                               "num_updates": 400000}],
        "task_state": {"dictionaries": [_dictionary(k)]},
        "extra_state": {"metrics": {}, "previous_training_time": 312345.6,
                        "train_iterator": {"epoch": 94, "iterations_in_epoch": 4242,
                                           "shuffle": True},
                        "val_loss": 3.27},
        "last_optimizer_state": adam,
    }
    torch.save(state, path, pickle_module=_PICKLE_MODULE)
    return path
