"""HuBERT / mHuBERT features from a fairseq checkpoint, without fairseq.

``load_hubert`` reads a fairseq ``.pt`` (through the restricted unpickler) or a transformers
``HubertModel`` directory, keeps the encoder layers up to ``layer`` and returns a
``HubertEncoder``: padded batches in, per-frame features out, each utterance's features the
same as when it is encoded alone (fairseq's ``extract_features(output_layer=layer)``).
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import HubertConfig, HubertModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import logging as hf_logging

from sgpt.core.audio import SAMPLE_RATE
from sgpt.core.errors import CheckpointError, first_line
from sgpt.core.safe_pickle import Stub, torch_load

# fairseq activation_fn -> transformers hidden_act
_ACTIVATIONS = {"gelu": "gelu", "gelu_accurate": "gelu_pytorch_tanh",
                "gelu_fast": "gelu_pytorch_tanh", "relu": "relu", "tanh": "tanh",
                "linear": "linear", "swish": "swish"}


class HubertEncoder(nn.Module):
    """The dense model: waveforms [B, T] -> features of encoder layer ``layer`` [B, F, D]."""

    name = "hubert"
    frame_rate = 50.0

    def __init__(self, model: HubertModel, layer: int, normalize: bool, source: str):
        super().__init__()
        self.model = model
        self.layer = layer
        self.normalize = normalize
        self.source = source
        self.dim = model.config.hidden_size
        self.frame_rate = SAMPLE_RATE / math.prod(model.config.conv_stride)

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs [B, T] zero-padded float, lengths [B] valid samples (each at least 400)
        -> feats [B, F, D] (zero past each item's end), feat_lengths [B]."""
        model, lengths = self.model, lengths.to(wavs.device)
        sizes = lengths.tolist()
        if self.normalize:  # fairseq's F.layer_norm(x, x.shape), over each item's own samples
            wavs = torch.stack([F.pad(F.layer_norm(w[:n], (n,)), (0, wavs.shape[1] - n))
                                for w, n in zip(wavs.float(), sizes)])
        dtype = model.feature_projection.projection.weight.dtype
        # Convolutions run in float32 on the CPU whatever the model's dtype: the bfloat16
        # convolutions of the oneDNN that torch ships (its BRGEMM kernels on AVX512-BF16/AMX
        # CPUs) can be wrong, not merely rounded, for strided shapes (pytorch#169688); on an
        # AMX Xeon they put these features off by a quarter of their scale. Matrix products
        # (projection, attention, feed-forward) run in the model's dtype.
        conv_dtype = torch.float32 if wavs.device.type == "cpu" else dtype
        x = wavs.to(conv_dtype)[:, None]

        for block in model.feature_extractor.conv_layers:
            conv = block.conv
            x = _conv(conv, x, conv_dtype)
            lengths = (torch.div(lengths - conv.kernel_size[0], conv.stride[0],
                                 rounding_mode="floor") + 1).clamp(min=0)
            norm = getattr(block, "layer_norm", None)
            if isinstance(norm, nn.GroupNorm):  # over time: each item over its own frames
                x = _group_norm_per_item(x, lengths.tolist(), norm)
            elif norm is not None:
                x = F.layer_norm(x.transpose(1, 2), norm.normalized_shape,
                                 norm.weight.to(conv_dtype), norm.bias.to(conv_dtype),
                                 norm.eps).transpose(1, 2)
            x = block.activation(x)
        if (lengths < 1).any():
            raise ValueError("an utterance is shorter than one HuBERT frame (400 samples)")

        # layer norm, then projection
        x = model.feature_projection(x.transpose(1, 2).to(dtype))
        valid = torch.arange(x.shape[1], device=x.device) < lengths[:, None]
        x = x.masked_fill(~valid[..., None], 0.0)  # padding must not reach the positional conv
        pos = model.encoder.pos_conv_embed  # conv, trim to "same" length, activation
        p = pos.activation(pos.padding(_conv(pos.conv, x.transpose(1, 2), conv_dtype)))
        x = x + p.transpose(1, 2).to(dtype)
        if not model.config.do_stable_layer_norm:
            x = model.encoder.layer_norm(x)
        mask = create_bidirectional_mask(config=model.config, inputs_embeds=x,
                                         attention_mask=valid)
        for block in model.encoder.layers:
            x = block(x, attention_mask=mask)
        return x.masked_fill(~valid[..., None], 0.0), lengths


def _conv(conv: nn.Conv1d, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``conv`` applied to ``x`` in ``dtype`` (its weights cast, weight norm included)."""
    bias = None if conv.bias is None else conv.bias.to(dtype)
    return F.conv1d(x.to(dtype), conv.weight.to(dtype), bias, conv.stride, conv.padding,
                    conv.dilation, conv.groups)


def _group_norm_per_item(x: torch.Tensor, lengths: list[int], norm: nn.GroupNorm
                         ) -> torch.Tensor:
    """fairseq's Fp32GroupNorm over each item's first ``lengths[i]`` frames; zero after."""
    out = torch.zeros_like(x)
    weight, bias = norm.weight.float(), norm.bias.float()
    for i, n in enumerate(lengths):
        item = F.group_norm(x[i : i + 1, :, :n].float(), norm.num_groups, weight, bias, norm.eps)
        out[i, :, :n] = item[0].to(x.dtype)
    return out


def load_hubert(path: str | os.PathLike, layer: int = 11) -> HubertEncoder:
    """A HubertEncoder from a fairseq HuBERT/mHuBERT ``.pt`` or a transformers directory.

    Layer ``L`` is fairseq's ``output_layer=L`` (for post-LN models such as HuBERT-base,
    transformers' ``hidden_states[L]``). Errors are CheckpointError with one line.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        model, normalize = _load_transformers_dir(path, layer)
    else:
        model, normalize = _load_fairseq(path, layer)
    source = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    return HubertEncoder(model, layer, normalize, source).eval()


def load(checkpoint: str | None, layer: int, device: str | torch.device,
         dtype: str | torch.dtype) -> HubertEncoder:
    """The ``hubert`` entry of sgpt.units.encoders: load_hubert, on ``device`` in ``dtype``."""
    from sgpt.core.device import resolve_dtype

    if checkpoint is None:
        raise CheckpointError("the hubert encoder needs --checkpoint (a fairseq .pt file "
                              "or a transformers HubertModel directory)")
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, torch.device(device))
    return load_hubert(checkpoint, layer).to(device, dtype)


def _check_layer(path: str, layer: int, n_layers: int) -> None:
    if not 1 <= layer <= n_layers:
        raise CheckpointError(f"{path}: layer {layer} is out of range: the model has "
                              f"{n_layers} encoder layers (use 1 to {n_layers})")


def _load_transformers_dir(path: str, layer: int) -> tuple[HubertModel, bool]:
    """A transformers HubertModel (or HubertFor*) directory, cut after ``layer``."""
    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
        raise CheckpointError(f"{path}: a directory without config.json, not a transformers "
                              "model directory")
    with open(config_file) as f:
        model_type = json.load(f).get("model_type")
    if model_type != "hubert":
        raise CheckpointError(f"{path}: not a HuBERT model (model_type is {model_type!r})")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # stderr is for our own lines and progress
    try:
        model, info = HubertModel.from_pretrained(path, output_loading_info=True,
                                                   dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot load the model ({first_line(e)})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    missing = [k for k in info["missing_keys"] if not k.startswith("masked_spec_embed")]
    if missing:
        raise CheckpointError(f"{path}: weights missing: {', '.join(missing[:5])}")
    _check_layer(path, layer, model.config.num_hidden_layers)
    del model.encoder.layers[layer:]
    model.config.num_hidden_layers = layer
    normalize = False
    preprocessor = os.path.join(path, "preprocessor_config.json")
    if os.path.exists(preprocessor):
        with open(preprocessor) as f:
            normalize = bool(json.load(f).get("do_normalize", False))
    return model, normalize


def _load_fairseq(path: str, layer: int) -> tuple[HubertModel, bool]:
    """A fairseq HuBERT checkpoint's weights in a transformers HubertModel of ``layer`` layers."""
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    model_cfg, task_cfg = _fairseq_configs(path, ckpt)
    config = _hubert_config(path, model_cfg)
    _check_layer(path, layer, config.num_hidden_layers)
    if task_cfg.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise CheckpointError(f"{path}: the model expects {task_cfg['sample_rate']} Hz audio, "
                              f"not {SAMPLE_RATE} Hz")
    config.num_hidden_layers = layer
    model = HubertModel(config)
    weights = ckpt["model"]
    state, missing = {}, []
    for name, param in model.state_dict().items():
        fairseq_name = _fairseq_name(name, config.feat_extract_norm)
        if fairseq_name not in weights:
            missing.append(fairseq_name)
        elif weights[fairseq_name].shape != param.shape:
            raise CheckpointError(f"{path}: {fairseq_name} has shape "
                                  f"{tuple(weights[fairseq_name].shape)}, the model config "
                                  f"implies {tuple(param.shape)}")
        else:
            state[name] = weights[fairseq_name]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{path}: not a HuBERT checkpoint: missing weights "
                              f"{', '.join(missing[:5])}{more}")
    model.load_state_dict(state)
    return model, bool(task_cfg.get("normalize", False))


def _plain(obj: Any) -> Any:
    """Config objects as plain data: Namespace and omegaconf Stubs become dicts."""
    if isinstance(obj, Stub):
        state = vars(obj)
        if "_val" in state:  # an omegaconf value node
            obj = state["_val"]
        elif "_content" in state:  # an omegaconf DictConfig / ListConfig
            obj = state["_content"]
        else:  # argparse.Namespace
            obj = {k: v for k, v in state.items() if not k.startswith("_")}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _fairseq_configs(path: str, ckpt: dict) -> tuple[dict, dict]:
    """(model, task) config sections: hydra ``cfg``, else the older ``args`` Namespace."""
    if ckpt.get("cfg") is not None:
        cfg = _plain(ckpt["cfg"])
        model, task = cfg.get("model"), cfg.get("task")
    else:
        model = task = _plain(ckpt.get("args"))
    if not isinstance(model, dict) or not isinstance(task, dict):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no model/task config in "
                              "'cfg' or 'args')")
    return model, task


def _conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Parse conv_feature_layers, "[(512,10,5)] + [(512,3,2)] * 4", without eval."""
    layers = []
    for term in spec.split("+"):
        match = re.fullmatch(r"\s*(\[.*\])\s*(?:\*\s*(\d+))?\s*", term)
        if match is None:
            raise ValueError(term)
        layers += [tuple(layer) for layer in ast.literal_eval(match[1])] * int(match[2] or 1)
    return layers


def _hubert_config(path: str, cfg: dict) -> HubertConfig:
    """The transformers config of a fairseq HuBERT model config (fairseq's defaults)."""
    for key, default in (("layer_type", "transformer"), ("pos_conv_depth", 1),
                         ("conv_pos_batch_norm", False)):
        if cfg.get(key, default) != default:
            raise CheckpointError(f"{path}: unsupported model: {key} is {cfg[key]!r}")
    mode = cfg.get("extractor_mode", "default")
    activation = cfg.get("activation_fn", "gelu")
    if mode not in ("default", "layer_norm") or activation not in _ACTIVATIONS:
        raise CheckpointError(f"{path}: unsupported model: extractor_mode {mode!r}, "
                              f"activation_fn {activation!r}")
    spec = cfg.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")
    try:
        conv = _conv_layers(spec)
    except (ValueError, SyntaxError, TypeError):
        raise CheckpointError(f"{path}: cannot parse conv_feature_layers {spec!r}") from None
    return HubertConfig(
        hidden_size=cfg.get("encoder_embed_dim", 768),
        num_hidden_layers=cfg.get("encoder_layers", 12),
        num_attention_heads=cfg.get("encoder_attention_heads", 12),
        intermediate_size=cfg.get("encoder_ffn_embed_dim", 3072),
        hidden_act=_ACTIVATIONS[activation],
        feat_extract_norm="group" if mode == "default" else "layer",
        conv_dim=[c[0] for c in conv], conv_kernel=[c[1] for c in conv],
        conv_stride=[c[2] for c in conv], conv_bias=bool(cfg.get("conv_bias", False)),
        num_conv_pos_embeddings=cfg.get("conv_pos", 128),
        num_conv_pos_embedding_groups=cfg.get("conv_pos_groups", 16),
        do_stable_layer_norm=bool(cfg.get("layer_norm_first", False)),
        mask_time_prob=0.0,  # no masked_spec_embed: features only
    )


# transformers HubertModel name -> fairseq HubertModel name (first match wins)
_RENAMES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"feature_projection\.layer_norm\.", "layer_norm."),
    (r"feature_projection\.projection\.", "post_extract_proj."),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0",
     "encoder.pos_conv.0.weight_g"),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1",
     "encoder.pos_conv.0.weight_v"),
    (r"encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
    (r"encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
]


def _fairseq_name(name: str, feat_extract_norm: str) -> str:
    """The fairseq state-dict key holding transformers' parameter ``name``."""
    match = re.match(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", name)
    if match:  # group norm: Sequential(conv, dropout, norm, gelu); layer norm: (.., (T, LN, T))
        inner = "2." if feat_extract_norm == "group" else "2.1."
        return f"feature_extractor.conv_layers.{match[1]}.{inner}{name[match.end():]}"
    for pattern, replacement in _RENAMES:
        renamed, n = re.subn(f"^{pattern}", replacement, name, count=1)
        if n:
            return renamed
    return name
