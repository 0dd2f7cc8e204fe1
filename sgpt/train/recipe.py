"""sgpt-train's recipe: the three SpeechGPT stages as one plain training loop.

One config (``TrainConfig``: a YAML file, flags over it), one loop that reads top to bottom:
load the base model, grow its embeddings to the extended tokenizer, wrap it in LoRA (peft)
or train it whole, then for each optimizer step take the step's global batch, accumulate the
token-weighted loss of this process's micro-batches, clip, step, log; evaluate the held-out
split now and then; checkpoint; at the end write the sgpt model directory.

Distributed: started by ``torchrun`` (``WORLD_SIZE`` > 1), each process joins the
``torch.distributed`` group (gloo on CPU, NCCL on CUDA) and the model is wrapped in DDP, or
sharded by decoder layer with FSDP's ``fully_shard`` (``strategy: fsdp``). The loss of a
step is the sum over its trained tokens divided by the global batch's trained token count
(known to every process without communication), so the update is the same on any number of
processes for the same global batch.

Checkpoints (``OUT/checkpoint/``): the trainable weights and AdamW's moments as safetensors
(whole tensors, gathered from FSDP shards), the step as JSON; no pickle. The data order is a
function of the seed and the step, dropout is seeded per step and process, so a run killed
at any point and started again with the same command continues where its last checkpoint
left it and ends with the weights an uninterrupted run gets.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sgpt.core.device import slow_bfloat16_note
from sgpt.core.errors import CheckpointError, SgptError
from sgpt.core.files import read_yaml_mapping, unwritable
from sgpt.core.training import (
    Interrupted,
    autocast,
    run_record,
    stop_requests,
    training_dtype,
    trim_log,
)
from sgpt.lm.models import (
    MODEL_META,
    STAGES,
    embeddings_tied,
    forward_keywords,
    is_gguf,
    load_causal_lm,
    model_meta,
    read_meta,
    resize_embeddings,
    save_model_dir,
    vocab_rows,
)
from sgpt.train.data import (
    LOSS_NORMS,
    DataError,
    Layout,
    Sequences,
    batch_tokens,
    check_stage,
    check_tokenizer,
    collate,
    micro_batches,
    split,
    step_indices,
    target_weights,
    trained_tokens,
)

CONFIG_FILE = "train_config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT = "checkpoint"
METHODS = ("full", "lora")
STRATEGIES = ("ddp", "fsdp")
# settings that may change between a run and its resumption without changing the result
NOT_IDENTITY = ("progress", "log_every", "device", "keep_checkpoint", "shared_prefix")
# tokens in a packed row at most: attention over a packed row costs its width squared
PACK_WIDTH = 1024
# attention implementations that take a custom 4-D mask (the rest get padded rows)
PACKABLE = ("sdpa", "eager")


class TrainError(SgptError):
    """A run that cannot start or go on as asked."""


class SettingsError(TrainError):
    """Settings that cannot make a run (a missing or invalid option): a usage error."""


@dataclass
class TrainConfig:
    """Every knob of a run; YAML keys and flags have these names (``-`` or ``_``)."""

    stage: str = ""
    model: str = ""                       # base: transformers dir, sgpt model dir, .gguf
    data: list[str] = field(default_factory=list)    # packed directories
    output: str = ""
    tokenizer: str | None = None          # default: the directory the data's header names
    eval_data: list[str] = field(default_factory=list)
    eval_fraction: float = 0.01           # held out of --data when no --eval-data
    eval_every: int = 200                 # steps (and at the end)
    method: str | None = None             # full | lora (default: lora in stage 3)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    train_new_tokens: bool = True         # LoRA: train the rows of tokens new to the base
    epochs: float = 1.0
    max_steps: int | None = None          # overrides epochs
    batch_size: int = 4                   # sequences per micro-batch and process
    grad_accum: int = 1
    lr: float = 2e-5
    min_lr_ratio: float = 0.0
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float = 1.0
    max_length: int | None = None         # cut sequences longer than this (tokens)
    gradient_checkpointing: bool = False
    shared_prefix: bool = True            # run the tokens a batch's rows share once
    loss_norm: str = "token"              # token: all targets alike | data: per --data source
    dtype: str = "auto"                   # autocast dtype: auto | float32 | bfloat16
    device: str = "auto"
    seed: int = 0
    save_every: int = 100                 # steps between checkpoints
    log_every: int = 10
    strategy: str = "ddp"                 # under torchrun: ddp (replicas) | fsdp (shards)
    merge: bool = False                   # LoRA: write the merged model, not the adapter
    keep_checkpoint: bool = False         # keep OUT/checkpoint after the run
    progress: bool | None = None

    def check(self) -> None:
        if self.stage not in STAGES:
            raise SettingsError(f"--stage must be one of {', '.join(STAGES)} (got "
                             f"{self.stage or 'none'})")
        for name in ("model", "output"):
            if not getattr(self, name):
                raise SettingsError(f"no --{name} given")
        if not self.data:
            raise SettingsError("no --data given")
        if self.method not in METHODS:
            raise SettingsError(f"--method must be full or lora (got {self.method})")
        positive = ("batch_size", "grad_accum", "eval_every", "save_every", "log_every",
                    "lora_r")
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.lr > 0 or not 0 <= self.warmup_ratio < 1 or not 0 <= self.eval_fraction < 1:
            raise SettingsError("need lr > 0, 0 <= warmup-ratio < 1, 0 <= eval-fraction < 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise SettingsError("--max-steps must be at least 1")
        if self.loss_norm not in LOSS_NORMS:
            raise SettingsError(f"--loss-norm must be one of {', '.join(LOSS_NORMS)} (got "
                                f"{self.loss_norm})")
        if self.strategy not in STRATEGIES:
            raise SettingsError(f"--strategy must be ddp or fsdp (got {self.strategy})")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise SettingsError(f"--dtype {self.dtype}: training autocasts to bfloat16 or runs "
                             "in float32 (float16 needs loss scaling: use bfloat16)")

    def identity(self) -> dict:
        """What must be the same for a run to resume another (paths compared absolute, so
        the same run started again from another directory, or with absolute paths, is the
        same run)."""
        return {k: v for k, v in absolute_paths(asdict(self)).items() if k not in NOT_IDENTITY}


PATH_KEYS = ("model", "output", "tokenizer")
PATH_LIST_KEYS = ("data", "eval_data")


def absolute_paths(values: dict) -> dict:
    """``values`` with its file and directory settings made absolute (from the cwd)."""
    values = dict(values)
    for key in PATH_KEYS:
        if values.get(key):
            values[key] = os.path.abspath(values[key])
    for key in PATH_LIST_KEYS:
        if values.get(key):
            values[key] = [os.path.abspath(p) for p in values[key]]
    return values


def config_keys() -> set[str]:
    return {f.name for f in fields(TrainConfig)}


# The kind of each setting is its default's; these have None or an empty list by default.
SETTING_KINDS = {"tokenizer": "", "method": "", "max_steps": 0, "max_length": 0,
                 "progress": False, "data": [""], "eval_data": [""], "lora_target": [""],
                 "adam_betas": [0.0]}


def make_config(file_values: dict, overrides: dict) -> TrainConfig:
    """A config from a YAML file's mapping and the flags given (flags win)."""
    defaults = {**asdict(TrainConfig()), **SETTING_KINDS}
    values: dict = {}
    for source in (file_values, overrides):
        for key, value in source.items():
            key = key.replace("-", "_")
            if key not in config_keys():
                raise SettingsError(f"unknown setting {key!r}")
            if key in ("data", "eval_data", "lora_target") and isinstance(value, str):
                value = [v for v in value.split(",") if v]
            values[key] = _typed(key, value, defaults.get(key))
    config = TrainConfig(**values)
    if config.method is None:
        config.method = "lora" if config.stage == "chain-of-modality" else "full"
    return config


def _typed(key: str, value, default):
    """``value`` as the kind of the setting's default: a number where a number goes (YAML
    reads ``1e-3`` as a string: it is taken as the number), else SettingsError."""
    if default is None or value is None:
        return value
    kind = type(default)
    if kind in (int, float) and isinstance(value, str):
        try:
            value = kind(value)
        except ValueError:
            pass
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,),
             list: (list,), tuple: (list, tuple)}
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", tuple: "a list"}
    if kind in kinds and (not isinstance(value, kinds[kind])
                          or (kind is not bool and isinstance(value, bool))):
        raise SettingsError(f"setting {key!r}: {value!r} is not {names[kind]}")
    if kind is list and default:  # a list of what the default's first item is
        value = [_typed(key, item, default[0]) for item in value]
    return value


def dump_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(absolute_paths(asdict(config)), sort_keys=False)


# --- the process group -------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()


def init_distributed(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    return Dist(rank, world, local)


# --- model --------------------------------------------------------------------------------------

def _model_vocab(source: str) -> dict[str, int] | None:
    """The vocabulary of the tokenizer that comes with a model directory, if it has one."""
    from sgpt.lm.tokenizer import TOKENIZER_FILES, TokenizerError, load_hf_tokenizer

    if is_gguf(source) or not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
        return None
    try:
        return load_hf_tokenizer(source).get_vocab()
    except TokenizerError:
        return None


def check_model_vocab(source: str, tok) -> list[int]:
    """Refuse a base model whose own tokenizer disagrees with ours; return the ids new to it.

    Our tokenizer must extend the model's (every token the model knows keeps its id); an sgpt
    model directory must carry the same k.
    """
    meta = read_meta(source) if os.path.isdir(source) else None
    if meta is not None and meta.get("k") not in (None, tok.k):
        raise TrainError(f"{source} was trained with k={meta['k']} unit tokens, the data's "
                         f"tokenizer has k={tok.k}")
    ours = tok.hf.get_vocab()
    theirs = _model_vocab(source)
    if theirs is None:
        return []
    wrong = [t for t, i in theirs.items() if ours.get(t) != i]
    if wrong:
        t = sorted(wrong, key=lambda t: theirs[t])[0]
        raise TrainError(f"vocabulary mismatch: {source}'s tokenizer has {t!r} as id "
                         f"{theirs[t]}, the data's tokenizer has it as "
                         f"{ours.get(t, 'no token')}: extend the model's own tokenizer "
                         "(sgpt-tokenize extend) and pack the data with it")
    return sorted(i for t, i in ours.items() if t not in theirs)


def build_model(config: TrainConfig, tok, new_ids: list[int], device: torch.device,
                log: Callable[[str], None]):
    """The model to train, and the ids of tokens new to the base (``new_ids``: those the
    base's own tokenizer lacks, if it has one; else the rows the resize adds)."""
    previous = continued_adapter(config)
    if previous is not None:
        return _continue_adapter(config, previous, new_ids, device, log)
    model = load_causal_lm(config.model, dtype=torch.float32, device="cpu")
    rows = vocab_rows(model)
    added = resize_embeddings(model, len(tok))
    if added and not new_ids:
        new_ids = added
    if added:
        log(f"embeddings grown from {rows} to {len(tok)} rows (new rows: the mean of the old)")
    if config.gradient_checkpointing:
        set_checkpointing(model, True)
    model.config.use_cache = False
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        trainable = None
        if config.train_new_tokens and new_ids:
            if model.get_output_embeddings() is not None and not embeddings_tied(model):
                trainable = {_embedding_name(model): new_ids,
                             _head_name(model): new_ids}
            else:
                trainable = new_ids
        torch.manual_seed(config.seed)  # LoRA's A matrices start random: the same each run
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout,
                          target_modules=list(config.lora_target), task_type="CAUSAL_LM",
                          trainable_token_indices=trainable)
        try:
            with warnings.catch_warnings():  # peft calls transformers' deprecated names
                warnings.simplefilter("ignore", FutureWarning)
                model = get_peft_model(model, lora)
        except ValueError as e:
            raise TrainError(f"LoRA on {config.model}: {e}") from None
    return model.to(device), new_ids


def continued_adapter(config: TrainConfig) -> dict | None:
    """The sgpt_model.json of ``--model`` when a LoRA run continues its adapter, else None.

    A LoRA stage on an sgpt adapter directory goes on training that adapter (its rank, its
    modules, its new-token rows) over the same base, so the three stages end as one adapter
    over the base model (the embedded default ships so)."""
    if config.method != "lora" or not os.path.isdir(config.model):
        return None
    meta = read_meta(config.model)
    return meta if meta is not None and meta.get("adapter") else None


def _continue_adapter(config: TrainConfig, previous: dict, new_ids: list[int],
                      device: torch.device, log: Callable[[str], None]):
    from sgpt.lm.models import load_model_dir

    model, _ = load_model_dir(config.model, merge=False)
    span = previous.get("new_token_ids")
    if not new_ids and span:
        new_ids = list(range(span[0], span[1] + 1))
    log(f"continuing the LoRA adapter of {config.model} over {previous['base_model']} "
        "(its rank and modules)")
    if config.gradient_checkpointing:
        set_checkpointing(model, True)
    model.config.use_cache = False
    return model.train().to(device), new_ids


def _embedding_name(model) -> str:
    emb = model.get_input_embeddings()
    return next(n for n, m in model.named_modules() if m is emb).split(".")[-1]


def _head_name(model) -> str:
    head = model.get_output_embeddings()
    return next(n for n, m in model.named_modules() if m is head).split(".")[-1]


def shard(model) -> None:
    """FSDP (``fully_shard``): each decoder layer is its own unit, the rest the root's."""
    from torch.distributed.fsdp import fully_shard

    kinds = set(getattr(getattr(model, "base_model", model), "_no_split_modules", None) or ())
    kinds |= set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in kinds]
    if not layers:
        raise TrainError("--strategy fsdp: the model names no decoder layer class to shard "
                         "by (_no_split_modules)")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)


def trainable_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def hold_frozen_in(model, dtype: torch.dtype) -> int:
    """Hold the frozen weights of the model's linear layers in ``dtype``, the autocast dtype.

    Autocast casts a weight at every use and caches only casts of trainable leaves, so a
    frozen float32 base is cast again in every forward pass: holding it cast changes no
    number (the same rounding, once) and halves its memory. Trainable weights, and the
    embeddings (the residual stream starts from them; a tied head shares them), stay
    float32. Returns how many parameters it cast."""
    keep = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings())
            if m is not None for p in m.parameters()}
    cast = 0
    for module in model.modules():
        w = getattr(module, "weight", None)
        if (isinstance(module, torch.nn.Linear) and not w.requires_grad and id(w) not in keep
                and w.dtype != dtype):
            w.data = w.data.to(dtype)
            cast += w.numel()
    return cast


def shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """How many leading tokens every row of a right-padded batch has in common, at most all
    but the last token of its shortest row (each row keeps a token of its own)."""
    if input_ids.shape[0] < 2:
        return 0
    limit = int(attention_mask.sum(1).min()) - 1
    if limit <= 0:
        return 0
    differs = (input_ids[:, :limit] != input_ids[:1, :limit]).any(0).nonzero()
    return int(differs[0]) if len(differs) else limit


def trained_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   keep: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """The logits at columns ``keep`` (ascending) of a batch, ``[rows, len(keep), vocab]``:
    the output head is paid only where a token is predicted that carries loss, not over the
    whole vocabulary at every position."""
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if positions is not None:
        inputs["position_ids"] = positions
    if "logits_to_keep" in forward_keywords(model):
        return model(**inputs, logits_to_keep=keep).logits
    return model(**inputs).logits[:, keep]


@dataclass
class Packed:
    """A batch as fewer rows without padding (``pack``), and where its targets are."""

    input_ids: torch.Tensor      # [groups, width]
    positions: torch.Tensor      # [groups, width]: each token's position in its own row
    mask: torch.Tensor           # [groups, 1, width, width]: True where a query sees a key
    row: torch.Tensor            # [targets]: the batch row each target belongs to
    group: torch.Tensor          # [targets]: the packed row predicting each target
    column: torch.Tensor         # [targets]: index into ``columns``
    columns: torch.Tensor        # ascending columns whose logits are needed
    targets: torch.Tensor        # [targets]: the token ids to predict
    computed: int                # groups x width: the positions a forward pass computes


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
         prefix: int, width: int = PACK_WIDTH) -> Packed:
    """Pack a right-padded batch whose rows share their first ``prefix`` tokens.

    Each packed row holds the prefix once and then, in order, the own tokens of as many
    batch rows as fit in ``width`` (at least one). A row's tokens keep the positions they
    have in their own row and attend to the prefix and to their own earlier tokens only, so
    every logit is the one the row gets alone, to rounding."""
    lengths = attention_mask.sum(1).tolist()
    groups: list[list[int]] = []
    filled = cols = 0
    for r, n in enumerate(lengths):
        if groups and filled + n - prefix <= width:
            groups[-1].append(r)
            filled += n - prefix
        else:
            groups.append([r])
            filled = n
        cols = max(cols, filled)
    ids = torch.zeros(len(groups), cols, dtype=input_ids.dtype)
    positions = torch.zeros(len(groups), cols, dtype=torch.long)
    segment = torch.full((len(groups), cols), -2)  # -1: the prefix, r: row r, -2: padding
    where = torch.zeros(input_ids.shape, dtype=torch.long)  # (group, column) of every token
    home = torch.zeros(input_ids.shape[0], dtype=torch.long)
    for g, rows in enumerate(groups):
        ids[g, :prefix] = input_ids[rows[0], :prefix]
        positions[g, :prefix] = torch.arange(prefix)
        segment[g, :prefix] = -1
        at = prefix
        for r in rows:
            n = lengths[r] - prefix
            ids[g, at:at + n] = input_ids[r, prefix:lengths[r]]
            positions[g, at:at + n] = torch.arange(prefix, lengths[r])
            segment[g, at:at + n] = r
            where[r, :prefix] = torch.arange(prefix)
            where[r, prefix:lengths[r]] = torch.arange(at, at + n)
            home[r] = g
            at += n
    causal = torch.ones(cols, cols, dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    mask = causal & (same | (segment[:, None, :] == -1)) | torch.eye(cols, dtype=torch.bool)
    rows, t = labels[:, 1:].ne(-100).nonzero(as_tuple=True)
    t = t + 1  # target t of row r is predicted at t - 1
    columns, column = torch.unique(where[rows, t - 1], return_inverse=True)
    return Packed(ids, positions, mask[:, None], rows, home[rows], column, columns,
                  labels[rows, t], len(groups) * cols)


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Logits in at least float32 for the loss (bfloat16 autocast gives bfloat16)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def loss_sum(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropy over each row's trained tokens, ``[rows]`` (label -100: not
    trained; label i is predicted at position i - 1)."""
    keep = labels[:, 1:].ne(-100).any(0).nonzero().squeeze(1)
    logits = trained_logits(model, input_ids, attention_mask, keep)
    losses = F.cross_entropy(upcast(logits).reshape(-1, logits.shape[-1]),
                             labels[:, keep + 1].reshape(-1), ignore_index=-100,
                             reduction="none")
    return losses.view(len(labels), -1).sum(1)


def packed_loss_sum(model, packed: Packed, rows: int, device: torch.device) -> torch.Tensor:
    """``loss_sum`` of the batch of ``rows`` rows that ``packed`` holds (tensors moved to
    ``device``)."""
    mask = packed.mask.to(device)
    if getattr(model, "module", model).config._attn_implementation == "eager":
        mask = torch.zeros(mask.shape, device=device).masked_fill(  # eager adds its mask
            ~mask, torch.finfo(torch.float32).min)
    logits = trained_logits(model, packed.input_ids.to(device), mask,
                            packed.columns.to(device), packed.positions.to(device))
    logits = logits[packed.group.to(device), packed.column.to(device)]
    losses = F.cross_entropy(upcast(logits), packed.targets.to(device), reduction="none")
    return losses.new_zeros(rows).index_add(0, packed.row.to(device), losses)


def make_optimizer(params: dict[str, torch.nn.Parameter], config: TrainConfig):
    decay = [p for p in params.values() if p.ndim >= 2]
    rest = [p for p in params.values() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.adam_betas),
                             eps=1e-8, foreach=False)


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float, dist: Dist,
                   sharded: bool) -> float:
    """Scale the gradients so that their global L2 norm is at most ``max_norm``; return the
    norm before scaling (torch's clip_grad_norm_, the same coefficient).

    The norm is summed in float64 over each process's shards (FSDP), so it is the same
    float32 number however the parameters are sharded: torch's sums float32 squares in an
    order that depends on the shards, and the one-ulp difference in the coefficient that
    scales every gradient left two FSDP processes unequal to one process with the same
    global batch (and, through bfloat16 autocast rounding, far from it)."""
    grads = [p.grad for p in params if p.grad is not None]
    local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    total = sum(float(g.detach().double().square().sum()) for g in local)
    if sharded:
        total, = dist.sum([total])
    norm = math.sqrt(total)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in local:
            g.detach().mul_(coef)
    return norm


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warmup over ``warmup_ratio`` of the steps, then cosine to ``min_lr_ratio``."""
    warmup = math.ceil(config.warmup_ratio * total)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# --- checkpoints --------------------------------------------------------------------------------

def whole(t: torch.Tensor) -> torch.Tensor:
    """A tensor whole on the CPU; an FSDP shard is gathered (all processes must call)."""
    t = t.detach()
    if hasattr(t, "full_tensor"):  # a DTensor
        t = t.full_tensor()
    return t.to("cpu").contiguous()


def like(ref: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``full`` placed as ``ref`` is: this process's shard of it when ``ref`` is a DTensor."""
    full = full.to(ref.device, ref.dtype)
    if hasattr(ref, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full, ref.device_mesh, ref.placements, src_data_rank=None)
    return full


def save_checkpoint(out: Path, step: int, params: dict, optimizer, state: dict,
                    write: bool = True) -> None:
    """``out/checkpoint/``: weights.safetensors, optimizer.safetensors, state.json; replaced
    whole (written beside, then renamed). Every process calls it (sharded tensors are
    gathered); the one with ``write`` writes."""
    from safetensors.torch import save_file

    weights = {n: whole(p) for n, p in params.items()}
    moments, steps = {}, {}
    for name, p in params.items():
        s = optimizer.state.get(p)
        if s:
            moments[f"{name}.exp_avg"] = whole(s["exp_avg"])
            moments[f"{name}.exp_avg_sq"] = whole(s["exp_avg_sq"])
            steps[name] = float(s["step"])
    if not write:
        return
    tmp = out / f".{CHECKPOINT}.tmp"
    old = out / f".{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, str(tmp / "weights.safetensors"))
    save_file(moments, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step,
                                                "optimizer_steps": steps}, indent=1) + "\n")
    current = out / CHECKPOINT
    if current.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(current, old)
    os.replace(tmp, current)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(out: Path) -> Path | None:
    for name in (CHECKPOINT, f".{CHECKPOINT}.old"):  # .old: killed between two renames
        if (out / name / "state.json").is_file():
            return out / name
    return None


def load_checkpoint(path: Path, params: dict, optimizer=None) -> dict:
    """The checkpoint's weights into ``params`` (and its moments into ``optimizer``, when
    given); its state.json."""
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    weights = load_file(str(path / "weights.safetensors"))
    if set(weights) != set(params):
        raise CheckpointError(f"{path}: its weights are not this model's trainable ones")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(like(p, weights[name]))
    if optimizer is None:
        return state
    moments = load_file(str(path / "optimizer.safetensors"))
    for name, p in params.items():
        if name in state["optimizer_steps"]:
            optimizer.state[p] = {
                "step": torch.tensor(state["optimizer_steps"][name]),
                "exp_avg": like(p, moments[f"{name}.exp_avg"]).float(),
                "exp_avg_sq": like(p, moments[f"{name}.exp_avg_sq"]).float()}
    return state


def set_checkpointing(model, on: bool) -> None:
    """Activation (gradient) checkpointing on or off, by the name this transformers has:
    transformers 5 renamed it and warns on stderr at every call of the old name."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={
            "use_reentrant": False})
    elif hasattr(model, "gradient_checkpointing_disable"):
        model.gradient_checkpointing_disable()


# --- the run -------------------------------------------------------------------------------------

class Run:
    """One training run: set up (everything checked before OUT is touched), then ``train``."""

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print,
                 warn: Callable[[str], None] = print, *, for_snapshot: bool = False):
        from sgpt.core.device import resolve_device
        from sgpt.lm.tokenizer import SpeechTokenizer

        config.check()
        self.config, self.log, self.warn = config, log, warn
        self.out = Path(config.output)
        # every input is checked before OUT is touched
        self.data = Sequences(config.data)
        self.tokenizer_dir = check_tokenizer(self.data, config.tokenizer)
        self.tok = SpeechTokenizer.from_dir(self.tokenizer_dir)
        if len(self.data) == 0:
            raise DataError(f"{config.data[0]}: no sequences to train on (empty data)")
        check_stage(self.data, config.stage, self.tok)
        if config.eval_data:
            self.eval_data = Sequences(config.eval_data)
            if self.eval_data.tokenizer.get("fingerprint") != self.data.tokenizer.get(
                    "fingerprint"):
                raise DataError(f"{config.eval_data[0]}: built with another tokenizer than "
                                "the training data")
            check_stage(self.eval_data, config.stage, self.tok)  # held out: the same task
            self.train_idx = np.arange(len(self.data))
            self.eval_idx = np.arange(len(self.eval_data))
        else:
            self.eval_data = self.data
            self.train_idx, self.eval_idx = split(len(self.data), config.eval_fraction,
                                                  config.seed)
        self.new_ids = check_model_vocab(config.model, self.tok)
        self.finished = self._check_output()
        if self.finished and not for_snapshot:
            return
        self.dist = init_distributed(config.device)
        self.layout = Layout(config.batch_size, config.grad_accum, self.dist.world)
        if len(self.train_idx) < self.layout.global_batch:
            raise DataError(
                f"{config.data[0]}: {len(self.train_idx)} training sequences, fewer than one "
                f"global batch of {self.layout.global_batch} (batch size {config.batch_size} "
                f"x grad accum {config.grad_accum} x {self.dist.world} processes)")
        per_epoch = len(self.train_idx) // self.layout.global_batch
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * per_epoch))
        self.per_epoch = per_epoch
        if self.dist.world > 1 and torch.cuda.is_available() and config.device != "cpu":
            self.device = torch.device("cuda", self.dist.local_rank)
        else:
            self.device = resolve_device(config.device)
        self.autocast_dtype = training_dtype(config.dtype, self.device)
        note = slow_bfloat16_note(self.autocast_dtype, self.device)
        if note and self.dist.main:
            self.log(note)
        self.pad_id = (self.tok.hf.pad_token_id if self.tok.hf.pad_token_id is not None
                       else (self.tok.eos_id or 0))
        self.model, self.new_ids = build_model(config, self.tok, self.new_ids, self.device,
                                               self.log if self.dist.main else lambda m: None)
        self.fsdp = self.dist.world > 1 and config.strategy == "fsdp"
        self.share_prefix = config.shared_prefix and getattr(
            self.model.config, "_attn_implementation", None) in PACKABLE
        # FSDP shards a module's parameters as one flat tensor of one dtype
        self.base_cast = (self.autocast_dtype is not None and not self.fsdp
                          and hold_frozen_in(self.model, self.autocast_dtype) > 0)

    def _check_output(self) -> bool:
        """OUT is new, or holds a run of the same settings: unfinished (then it resumes) or
        finished (True: nothing to do)."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise TrainError(f"{out}: exists and is not a directory")
        reason = unwritable(out)
        if reason:
            raise TrainError(f"{out}: {reason}")
        if not out.exists() or not any(out.iterdir()):
            return False
        saved = out / CONFIG_FILE
        if not saved.is_file():
            raise TrainError(f"{out}: exists and holds no sgpt-train run: give another -o")
        try:
            old = make_config(read_yaml_mapping(saved), {}).identity()
        except (SgptError, TypeError):
            raise TrainError(f"{saved}: not an sgpt-train config: give another -o") from None
        new = self.config.identity()
        if old != new:
            diff = sorted(k for k in new if old.get(k) != new[k])
            raise TrainError(f"{out}: holds a run with other settings ({', '.join(diff)}): "
                             "start it as before to resume it, or give another -o")
        return (out / MODEL_META).is_file()

    # --- pieces of a step

    def _autocast(self):
        return autocast(self.device, self.autocast_dtype)

    def _loss_sum(self, model, batch: dict) -> torch.Tensor:
        """Sum of the cross-entropy over each row's trained tokens, ``[rows]``."""
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        packed = None
        if self.share_prefix and len(ids) > 1:
            packed = pack(ids, mask, labels, shared_prefix(ids, mask))
            if packed.computed >= ids.numel():  # nothing shared, no padding to drop
                packed = None
        with self._autocast():
            if packed is None:
                return loss_sum(model, ids.to(self.device), mask.to(self.device),
                                labels.to(self.device))
            return packed_loss_sum(model, packed, len(ids), self.device)

    @torch.no_grad()
    def evaluate(self, model) -> float | None:
        """Mean loss per trained token over the held-out sequences (all processes)."""
        if not len(self.eval_idx):
            return None
        model.eval()
        mine = self.eval_idx[self.dist.rank::self.dist.world]
        total, count = 0.0, 0
        b = self.config.batch_size
        # every process runs as many forward passes (FSDP gathers weights in each)
        rounds = math.ceil(math.ceil(len(self.eval_idx) / self.dist.world) / b)
        for r in range(rounds):
            part = mine[r * b:(r + 1) * b]
            batch = collate(self.eval_data, part if len(part) else self.eval_idx[:1],
                            self.pad_id, self.config.max_length)
            loss = float(self._loss_sum(model, batch).sum())
            if len(part):
                total += loss
                count += int(batch["labels"][:, 1:].ne(-100).sum())
        model.train()
        total, count = self.dist.sum([total, float(count)])
        return total / count if count else None

    # --- the loop

    def _stop_requested(self, stop: list[int]) -> bool:
        """Whether SIGINT/SIGTERM asked the run to stop: in any process, so that all of
        them save the same step's checkpoint together."""
        if self.dist.world == 1:
            return bool(stop)
        return self.dist.sum([1.0 if stop else 0.0])[0] > 0

    def _accumulate(self, model, wrapped, micro: list, weight: dict[int, float],
                    fsdp: bool) -> float:
        """Forward and backward over this process's micro-batches of a step, each row's
        targets weighted by ``weight[sequence]``, gradients synchronized on the last; the
        summed loss."""
        step_loss = 0.0
        for a, mb in enumerate(micro):
            batch = collate(self.data, mb, self.pad_id, self.config.max_length)
            sync = a == len(micro) - 1 or self.dist.world == 1
            ctx = nullcontext()
            if fsdp:
                model.set_requires_gradient_sync(sync)
            elif not sync:
                ctx = wrapped.no_sync()
            with ctx:
                losses = self._loss_sum(wrapped, batch)
                w = torch.tensor([weight[int(i)] for i in mb], dtype=losses.dtype,
                                 device=losses.device)
                ((losses * w).sum() * self.dist.world).backward()
            step_loss += float(losses.detach().sum())
        return step_loss

    def train(self, advance: Callable[[int], None] = lambda n: None) -> dict:
        if self.finished:
            self.log(f"{self.out}: finished already ({MODEL_META} is there): nothing to do")
            return {"finished": True}
        config, dist = self.config, self.dist
        model = self.model
        fsdp = self.fsdp
        if fsdp:
            shard(model)  # before the optimizer: it holds the shards
        params = trainable_parameters(model)
        optimizer = make_optimizer(params, config)
        start, elapsed = 0, 0.0
        ckpt = find_checkpoint(self.out)
        if ckpt is not None:
            state = load_checkpoint(ckpt, params, optimizer)
            start, elapsed = state["step"], state.get("elapsed", 0.0)
            if dist.main:
                self.log(f"resuming from {ckpt} at step {start} of {self.total_steps}")
        if dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / CONFIG_FILE).write_text(dump_yaml(config))
            trim_log(self.out / METRICS_FILE, start)
            self._metric(run_record(start, self.device, self.autocast_dtype,
                                    frozen="bfloat16" if self.base_cast else "float32",
                                    processes=dist.world))
            n = sum(p.numel() for p in params.values())
            self.log(f"{config.stage}: {config.method} fine-tuning, {n:,} trainable parameters, "
                     f"{len(self.train_idx):,} training / {len(self.eval_idx):,} held-out "
                     f"sequences, {self.total_steps} steps of {self.layout.global_batch} "
                     f"sequences on {dist.world} process(es)")
        dist.barrier()
        wrapped = model
        if dist.world > 1 and not fsdp:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        model.train()
        advance(start)
        window = {"loss": 0.0, "targets": 0, "tokens": 0, "time": 0.0}
        last = {}
        quiet = self.log if dist.main else (lambda m: None)
        with stop_requests(quiet) as stop:
            for step in range(start, self.total_steps):
                t0 = time.perf_counter()
                indices = step_indices(self.train_idx, self.layout, config.seed, step)
                denom = trained_tokens(self.data, indices, config.max_length)
                weight = dict(zip(indices.tolist(), target_weights(
                    self.data, indices, config.loss_norm, config.max_length).tolist()))
                lr = lr_at(step, self.total_steps, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                torch.manual_seed(config.seed * 1_000_003 + step * dist.world + dist.rank)
                micro = micro_batches(indices, self.layout, dist.rank)
                step_loss = self._accumulate(model, wrapped, micro, weight, fsdp)
                if config.max_grad_norm > 0:
                    clip_grad_norm(params.values(), config.max_grad_norm, dist, sharded=fsdp)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                dt = time.perf_counter() - t0
                elapsed += dt
                window["loss"] += step_loss
                window["targets"] += denom
                window["tokens"] += batch_tokens(self.data, indices, config.max_length)
                window["time"] += dt
                done = step + 1
                advance(1)
                if done % config.log_every == 0 or done == self.total_steps:
                    loss_sum, = dist.sum([window["loss"]])
                    last = {"step": done, "epoch": round(done / self.per_epoch, 4),
                            "loss": loss_sum / max(1, window["targets"]), "lr": lr,
                            "tokens_per_s": window["tokens"] / max(window["time"], 1e-9),
                            "tokens": window["tokens"], "elapsed_s": round(elapsed, 3)}
                    self._metric(last)
                    window = {"loss": 0.0, "targets": 0, "tokens": 0, "time": 0.0}
                if done % config.eval_every == 0 or done == self.total_steps:
                    eval_loss = self.evaluate(wrapped)
                    if eval_loss is not None:
                        last["eval_loss"] = eval_loss
                        self._metric({"step": done, "eval_loss": eval_loss})
                stopping = done < self.total_steps and self._stop_requested(stop)
                if stopping or (done % config.save_every == 0 and done < self.total_steps):
                    save_checkpoint(self.out, done, params, optimizer,
                                    {"elapsed": elapsed, "seed": config.seed}, write=dist.main)
                    dist.barrier()
                if stopping:
                    raise Interrupted(stop[0] if stop else signal.SIGTERM, done)
        self._finish(fsdp)
        return last

    def _finish(self, sharded: bool) -> None:
        """The model written into OUT, its checkpoint dropped unless kept."""
        self._save_model(sharded, self.out)
        if self.dist.main and not self.config.keep_checkpoint:
            shutil.rmtree(self.out / CHECKPOINT, ignore_errors=True)
        self.dist.barrier()

    def snapshot(self, dest: str | os.PathLike) -> int:
        """Write the model at OUT's latest checkpoint into ``dest``, as a finished run writes
        it (its sgpt_model.json says the step); OUT stays as it was, to be resumed. A new or
        empty ``dest``, or an earlier snapshot. Returns the step."""
        dest = Path(dest)
        if self.dist.world > 1:
            raise TrainError("a snapshot is written by one process: run it without torchrun")
        if dest.resolve() == self.out.resolve():
            raise TrainError(f"{dest}: the run's own directory: give another")
        if dest.exists() and not dest.is_dir():
            raise TrainError(f"{dest}: exists and is not a directory")
        if dest.is_dir() and any(dest.iterdir()):
            if not (read_meta(dest) or {}).get("snapshot"):
                raise TrainError(f"{dest}: exists and holds no snapshot: give another")
        reason = unwritable(dest)
        if reason:
            raise TrainError(f"{dest}: {reason}")
        ckpt = find_checkpoint(self.out)
        if ckpt is None:
            raise TrainError(f"{self.out}: no checkpoint to write a model from (a finished "
                             "run keeps one only with --keep-checkpoint)")
        step = load_checkpoint(ckpt, trainable_parameters(self.model))["step"]
        self._save_model(False, dest, snapshot={"run": str(self.out.resolve()), "step": step,
                                                "of": self.total_steps})
        return step

    def _metric(self, record: dict) -> None:
        if self.dist.main:
            with open(self.out / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _save_model(self, sharded: bool, out: Path, **extra) -> None:
        """Write the model directory ``out`` (the main process; with FSDP all gather
        first); ``extra`` goes into its sgpt_model.json."""
        config = self.config
        model = self.model
        lora = config.method == "lora"
        state_dict = None
        if sharded:  # gathered whole; a LoRA model is merged after, from the saved adapter
            state_dict = {n: whole(t) for n, t in model.state_dict().items()}
        if not self.dist.main:
            return
        # a base held in bfloat16 is merged from float32: through the written adapter, below
        direct_merge = lora and config.merge and not sharded and not self.base_cast
        if direct_merge:
            model = model.merge_and_unload()
        model.config.use_cache = True
        if config.gradient_checkpointing:
            set_checkpointing(model, False)
        adapter = lora and not direct_merge
        previous = continued_adapter(config)
        base = previous["base_model"] if previous and adapter else config.model
        meta = model_meta(config.stage, self.tok.k, adapter, base, len(self.tok),
                          method=config.method, new_token_ids=[self.new_ids[0], self.new_ids[-1]]
                          if self.new_ids else None, **extra)
        files = {CONFIG_FILE: dump_yaml(config)}
        save_model_dir(out, model, meta, self.tokenizer_dir, files, state_dict=state_dict)
        if adapter and config.merge:
            from sgpt.lm.models import load_model_dir

            merged, _ = load_model_dir(str(out))
            meta = {**meta, "adapter": False}
            meta.pop("base_model_path", None)
            save_model_dir(out, merged, meta, self.tokenizer_dir, files)
            adapter = False
        self.log(f"{out}: {'adapter' if adapter else 'model'} written")
