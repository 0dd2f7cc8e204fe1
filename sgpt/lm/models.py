"""Loading and saving the LLM: transformers directories, GGUF files, sgpt model directories.

An sgpt model directory (what sgpt-train writes, what sgpt-generate reads)::

    sgpt_model.json        {"format": "sgpt-model", "version": 1, "stage", "k", "adapter",
                            "base_model", "sgpt_version", "vocab_size"} (its version:
                            MODEL_FORMAT, sgpt.core.formats)
    config.json, model.safetensors, generation_config.json      a full model, or
    adapter_config.json, adapter_model.safetensors              a PEFT adapter over base_model
    tokenizer files + sgpt_tokenizer.json                       the extended tokenizer
    train_config.yaml                                           the effective training config

An adapter's base is ``base_model`` with its embeddings resized to the extended tokenizer
(``vocab_size``): new rows are the mean of the existing rows, deterministically, so the same
base gives the same resized model on every machine; the rows the adapter trained
(peft's ``trainable_token_indices``) are carried by the adapter itself.

Also loaded: a plain transformers causal-LM directory whose tokenizer is an extended one (the
published SpeechGPT-7B-cm), with an optional separate PEFT adapter directory on top (the
published SpeechGPT-7B-com), and a GGUF file (dequantized by transformers).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from sgpt import __version__
from sgpt.core.cache import cache_root, make_entry, read_manifest
from sgpt.core.default import is_pypi, resolve_pypi, resolve_reference
from sgpt.core.errors import CheckpointError, first_line
from sgpt.core.files import file_mode, make_temp_dir, write_json
from sgpt.core.formats import FileFormat

MODEL_META = "sgpt_model.json"
MODEL_FORMAT = FileFormat("sgpt-model", "an sgpt model description",
                          "train it again with sgpt-train")
STAGES = ("pretrain", "cross-modal", "chain-of-modality")
ADAPTER_CONFIG = "adapter_config.json"


@contextmanager
def quiet_transformers(gguf: bool = False):
    """No loading bars or info logs from transformers: stderr is for our own lines.

    ``gguf``: also the bar of GGUF dequantizing (whose module costs 0.3 s to import, so
    only loads of a GGUF file pay for it)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    gguf_utils = _gguf_utils() if gguf else None
    gguf_bar = getattr(gguf_utils, "tqdm", None)
    if gguf_bar is not None:  # GGUF loading draws a plain tqdm bar of its own
        gguf_utils.tqdm = functools.partial(gguf_bar, disable=True)
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if gguf_bar is not None:
            gguf_utils.tqdm = gguf_bar


def _gguf_utils():
    try:
        from transformers import modeling_gguf_pytorch_utils
    except Exception:  # an older or newer transformers: no bar to quiet
        return None
    return modeling_gguf_pytorch_utils


def is_gguf(source: str) -> bool:
    return str(source).endswith(".gguf")


def read_meta(path: str | os.PathLike) -> dict | None:
    """The ``sgpt_model.json`` of a directory, or None when it has none."""
    f = Path(path) / MODEL_META
    if not f.is_file():
        return None
    try:
        meta = json.loads(f.read_text())
    except ValueError:
        raise CheckpointError(f"{f}: not JSON") from None
    MODEL_FORMAT.check(f, meta)
    return meta


def vocab_rows(model) -> int:
    """How many token embedding rows ``model`` has."""
    return int(model.get_input_embeddings().weight.shape[0])


def embeddings_tied(model) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def forward_keywords(model) -> set[str]:
    """The keywords a causal LM's forward names; DDP and peft wrappers are looked through
    (they pass keywords on)."""
    import inspect

    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return set(inspect.signature(inner.forward).parameters)


def cache_keyword(model) -> str:
    """The keyword a causal LM's forward takes its key/value cache by: ``cache`` in recent
    transformers, ``past_key_values`` (deprecated there) before."""
    return "cache" if "cache" in forward_keywords(model) else "past_key_values"


def output_cache(out):
    """The key/value cache a forward returned, under either name."""
    cache = out.get("cache", None)
    return cache if cache is not None else out.get("past_key_values", None)


@torch.no_grad()
def resize_embeddings(model, vocab_size: int) -> list[int]:
    """Grow ``model``'s token embeddings (and an untied output head) to ``vocab_size`` rows.

    The new rows are the mean of the existing rows (of each matrix), not random: the same
    base gives the same resized model everywhere, and a new token starts as an "average"
    token rather than as noise the model has never seen. Tied weights stay tied. Returns
    the ids of the new rows (none when the model is large enough already).
    """
    old = vocab_rows(model)
    if vocab_size <= old:
        return []
    tied = embeddings_tied(model)
    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    in_mean = inp.float().mean(0)
    out_mean = out.weight.float().mean(0) if out is not None and not tied else None
    out_bias = getattr(out, "bias", None) if out is not None else None
    bias_mean = out_bias.float().mean() if out_bias is not None else None
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    inp = model.get_input_embeddings().weight
    inp[old:] = in_mean.to(inp.dtype)
    out = model.get_output_embeddings()
    if tied and out is not None and out.weight is not inp:
        raise CheckpointError("resizing the embeddings untied the output head")
    if out_mean is not None:
        out.weight[old:] = out_mean.to(out.weight.dtype)
    if bias_mean is not None and getattr(out, "bias", None) is not None:
        out.bias[old:] = bias_mean.to(out.bias.dtype)
    model.config.vocab_size = vocab_size
    return list(range(old, vocab_size))


def _from_pretrained(source: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": dtype}
    entry = None  # the cache entry of a GGUF file: read, or made after dequantizing
    if is_gguf(source):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"{source}: no such GGUF file")
        entry = _gguf_entry(path, dtype)
        cached = _cached_model(*entry, dtype)
        if cached is not None:
            return cached
        try:
            import gguf  # noqa: F401
        except ImportError:
            raise CheckpointError(f"{source}: reading GGUF files needs the gguf package "
                                  "(pip install gguf)") from None
        source, kwargs["gguf_file"] = str(path.parent), path.name
    elif not os.path.isdir(source):
        raise CheckpointError(f"{source}: no such model directory (or .gguf file)")
    elif not (Path(source) / "config.json").is_file():
        raise CheckpointError(f"{source}: no config.json: not a transformers model directory")
    try:
        with quiet_transformers(gguf="gguf_file" in kwargs):
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except CheckpointError:
        raise
    except Exception as e:  # transformers raises many kinds; the user needs one line
        raise CheckpointError(f"cannot load a causal LM from {source}: {first_line(e)}"
                              ) from None
    if entry is not None:
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config  # dequantized: saved as a plain model
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None  # its weights are plain tensors now
        _cache_model(*entry, model)
    return model


# A GGUF base is dequantized by transformers on every load (22 s for SmolLM2-135M's Q4_1 on
# 2 cores), and an adapter over it merged on every load of the model: both are kept in
# sgpt's cache (sgpt.core.cache) as transformers directories, keyed by the content of what
# they are made from (the GGUF file; the adapter's files), the dtype and the versions that
# made them, and later loads map them instead.

def _digest(*paths: Path) -> str:
    """sha256 of the files' names and contents."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _cache_entry(kind: str, dtype: torch.dtype, **made_from) -> tuple[Path, dict]:
    import transformers

    info = {**made_from, "dtype": str(dtype).replace("torch.", ""),
            "transformers": transformers.__version__}
    key = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / kind / f"{key}-{info['dtype']}", info


def _cached_model(entry: Path, info: dict, dtype: torch.dtype):
    """The model of a complete cache entry made from ``info``, else None (an entry that does
    not load is made again)."""
    from transformers import AutoModelForCausalLM

    manifest = read_manifest(entry)
    if manifest is None or any(manifest.get(k) != v for k, v in info.items()):
        return None
    try:
        with quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(str(entry), dtype=dtype)
    except Exception:
        return None


def _cache_model(entry: Path, info: dict, model) -> None:
    """Keep ``model`` in the cache; a cache that cannot be written (read-only, full) only
    costs the next load its time."""
    try:
        with quiet_transformers():
            make_entry(entry, lambda tmp: model.save_pretrained(str(tmp)), info)
    except OSError:
        pass


def _gguf_entry(path: Path, dtype: torch.dtype) -> tuple[Path, dict]:
    return _cache_entry("gguf", dtype, gguf=path.name, sha256=_digest(path))


def _merged_adapter(path: str, base: str, vocab_size: int, dtype: torch.dtype):
    """An sgpt adapter directory over a GGUF base, merged (what sgpt-generate runs): from
    the cache when it holds it."""
    adapter_files = sorted(p for p in Path(path).iterdir()
                           if p.is_file() and p.suffix in (".json", ".safetensors"))
    entry, info = _cache_entry("merged", dtype, gguf_sha256=_digest(Path(base)),
                               adapter_sha256=_digest(*adapter_files), vocab_size=vocab_size)
    model = _cached_model(entry, info, dtype)
    if model is None:
        model = _apply_adapter(_base_for(path, base, vocab_size, dtype), path, merge=True)
        _cache_model(entry, info, model)
    return model


def _base_for(path: str, base: str, vocab_size: int, dtype: torch.dtype):
    """An adapter directory's base, resized to the vocabulary it was trained with."""
    model = load_causal_lm(base, dtype=dtype, device="cpu", vocab_size=vocab_size)
    if vocab_rows(model) != vocab_size:
        raise CheckpointError(f"{path}: the base model has {vocab_rows(model)} token rows, "
                              f"the adapter was trained with {vocab_size}")
    return model


def load_causal_lm(source: str, *, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu", vocab_size: int | None = None):
    """A transformers causal LM from a directory or a GGUF file, on ``device``.

    ``source`` may also be an sgpt adapter directory: its base is loaded and the adapter
    merged in, or ``pypi:DIST/RELPATH``, a file of an installed distribution (see
    ``sgpt.core.default.resolve_pypi``). With ``vocab_size`` larger than the model's embeddings,
    they are resized (mean init, tied weights kept tied: see ``resize_embeddings``).
    """
    source = resolve_reference(str(source))
    meta = read_meta(source) if os.path.isdir(source) else None
    if meta is not None and meta.get("adapter"):
        model, _ = load_model_dir(source, dtype=dtype, device=device)
    else:
        model = _from_pretrained(source, dtype)
    if vocab_size is not None:
        resize_embeddings(model, vocab_size)
    return model.to(device)


def _tokenizer_size(path: str) -> int:
    from sgpt.lm.tokenizer import TokenizerError, load_hf_tokenizer

    try:
        return len(load_hf_tokenizer(path))
    except TokenizerError as e:
        raise CheckpointError(str(e)) from None


def _infer_meta(path: str, adapter: str | None) -> dict:
    """What a plain (published) directory would say in sgpt_model.json."""
    from sgpt.lm.tokenizer import SpeechTokenizer, TokenizerError

    k = None
    try:
        k = SpeechTokenizer.from_dir(path).k
    except TokenizerError:
        pass  # no tokenizer there, or not an extended one: k unknown
    return {**MODEL_FORMAT.stamp(), "stage": None, "k": k,
            "adapter": adapter is not None, "base_model": path, "inferred": True}


def resolve_base(meta: dict, path: str) -> str:
    """Where an adapter directory's base model is: as recorded, else absolute, else beside;
    ``pypi:DIST/RELPATH`` is a file of an installed distribution (the embedded default's)."""
    recorded = meta.get("base_model")
    if not isinstance(recorded, str) or not recorded:
        raise CheckpointError(f"{path}/{MODEL_META}: an adapter without 'base_model'")
    if is_pypi(recorded):
        return resolve_pypi(recorded)
    for candidate in (recorded, meta.get("base_model_path"),
                      os.path.join(path, recorded)):
        if candidate and os.path.exists(candidate):
            return candidate
    raise CheckpointError(f"{path}: its base model {recorded} is not there (the adapter "
                          "goes on the model it was trained on)")


# adapter_config.json keys that peft uses without checking their kind: (kinds, what they are)
_ADAPTER_KEYS = {
    "peft_type": ((str,), "a string"),
    "r": ((int,), "a positive integer"),
    "lora_alpha": ((int, float), "a number"),
    "lora_dropout": ((int, float), "a number"),
    "target_modules": ((str, list, type(None)), "a module name or a list of them"),
    "modules_to_save": ((list, type(None)), "a list of module names"),
    "bias": ((str,), "a string"),
    "fan_in_fan_out": ((bool,), "true or false"),
    "inference_mode": ((bool,), "true or false"),
    "use_rslora": ((bool,), "true or false"),
    "use_dora": ((bool,), "true or false"),
}


def _check_adapter_config(adapter: str) -> None:
    """CheckpointError naming adapter_config.json and the key, where peft would fail on it
    with a message that names neither (or take a wrong value without a word)."""
    where = f"{adapter}/{ADAPTER_CONFIG}"
    try:
        with open(Path(adapter) / ADAPTER_CONFIG, encoding="utf-8") as f:
            config = json.load(f)
    except RecursionError:
        raise CheckpointError(f"{where}: not JSON (nested too deep)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{where}: not JSON ({first_line(e)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: a PEFT adapter config must be a JSON object")
    for key, (kinds, what) in _ADAPTER_KEYS.items():
        value = config.get(key)
        if key in config and (not isinstance(value, kinds) or (
                isinstance(value, bool) and bool not in kinds) or (key == "r" and value < 1)):
            raise CheckpointError(f"{where}: '{key}' must be {what}, not {value!r}")


def _apply_adapter(model, adapter: str, merge: bool):
    if not (Path(adapter) / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{adapter}: no {ADAPTER_CONFIG}: not a PEFT adapter directory")
    _check_adapter_config(adapter)
    try:
        from peft import PeftModel
    except ImportError:
        raise CheckpointError(f"{adapter}: loading an adapter needs peft (pip install peft)"
                              ) from None
    try:
        with quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft calls deprecated names
            model = PeftModel.from_pretrained(model, adapter, is_trainable=not merge)
    except KeyError as e:  # peft reads adapter_config.json's keys without checking them
        raise CheckpointError(f"{adapter}/{ADAPTER_CONFIG}: no {e.args[0]!r} key: not a PEFT "
                              "adapter config") from None
    except Exception as e:
        raise CheckpointError(f"cannot apply the adapter {adapter}: {first_line(e)}") from None
    return model.merge_and_unload() if merge else model


def load_model_dir(path: str, *, adapter: str | None = None,
                   dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                   merge: bool = True):
    """``(model, meta)`` from an sgpt model directory or a plain one (+ optional adapter).

    An sgpt adapter directory loads its ``base_model`` resized to ``vocab_size`` rows,
    then the adapter; ``adapter`` adds one more adapter directory on top. With ``merge``
    (the default) adapters are merged into the weights (a plain transformers model comes
    back, fast at inference); otherwise a trainable ``PeftModel``.
    """
    path = str(path)
    if not os.path.isdir(path):
        if is_gguf(path) and adapter is None:
            return load_causal_lm(path, dtype=dtype, device=device), {
                **MODEL_FORMAT.stamp(), "stage": None, "k": None,
                "adapter": False, "base_model": path, "inferred": True}
        raise CheckpointError(f"{path}: no such model directory")
    meta = read_meta(path)
    if meta is None:
        meta = _infer_meta(path, adapter)
        model = _from_pretrained(path, dtype)
    elif meta.get("adapter"):
        vocab_size = meta.get("vocab_size") or _tokenizer_size(path)
        base = resolve_base(meta, path)
        if merge and is_gguf(base) and os.path.isfile(base):
            model = _merged_adapter(path, base, vocab_size, dtype)
        else:
            model = _apply_adapter(_base_for(path, base, vocab_size, dtype), path,
                                   merge=merge or adapter is not None)
    else:
        model = _from_pretrained(path, dtype)
    if adapter is not None:
        model = _apply_adapter(model, adapter, merge=merge)
        meta = {**meta, "adapter": True, "extra_adapter": adapter}
    return model.to(device).eval(), meta


# --- writing --------------------------------------------------------------------------------

def copy_tokenizer(source: str, dest: str | os.PathLike) -> None:
    """Copy a tokenizer directory's files byte for byte (its fingerprint stays the same)."""
    from sgpt.lm.tokenizer import TOKENIZER_FILES

    for name in TOKENIZER_FILES:
        f = Path(source) / name
        if f.is_file():
            shutil.copyfile(f, Path(dest) / name)


def model_meta(stage: str, k: int, adapter: bool, base_model: str, vocab_size: int,
               **extra) -> dict:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    meta = {**MODEL_FORMAT.stamp(), "stage": stage, "k": int(k),
            "adapter": bool(adapter), "base_model": base_model, "sgpt_version": __version__,
            "vocab_size": int(vocab_size)}
    if adapter and not is_pypi(base_model):
        meta["base_model_path"] = os.path.abspath(base_model)
    meta.update(extra)
    return meta


def save_model_dir(output: str | os.PathLike, model, meta: dict, tokenizer_dir: str,
                   files: dict[str, str] | None = None, state_dict: dict | None = None
                   ) -> None:
    """Write an sgpt model directory; a reader never sees it half written.

    ``model`` is a transformers model (full) or a ``PeftModel`` (its adapter only);
    ``files`` maps further file names to their text (the effective config). The files are
    written beside ``output``, then moved into it (other files there, such as a training
    run's metrics, stay), ``sgpt_model.json`` last: its presence marks the directory whole.
    ``state_dict``: the weights to write, when the model's own are sharded (FSDP).
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_META).unlink(missing_ok=True)
    tmp = make_temp_dir(out.parent, f".{out.name}.model.")
    try:
        _write_model_files(tmp, model, meta, tokenizer_dir, files, state_dict)
        stale = ({"model.safetensors", "config.json", "generation_config.json"}
                 if meta["adapter"] else {"adapter_model.safetensors", ADAPTER_CONFIG})
        for name in stale:
            (out / name).unlink(missing_ok=True)
        mode = file_mode()
        for f in sorted(tmp.iterdir()):
            os.chmod(f, mode)  # a writer's temporary file may be private; a model is shared
            os.replace(f, out / f.name)
        write_json(out / MODEL_META, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_model_files(tmp: Path, model, meta: dict, tokenizer_dir: str,
                       files: dict[str, str] | None, state_dict: dict | None) -> None:
    extra = {} if state_dict is None else {"state_dict": state_dict}
    with quiet_transformers():
        if meta["adapter"]:  # the base's resized rows are reproducible: not saved again
            model.save_pretrained(str(tmp), safe_serialization=True,
                                  save_embedding_layers=False, **extra)
        else:
            model.save_pretrained(str(tmp), safe_serialization=True, **extra)
        card = tmp / "README.md"  # peft's model card template: not ours to publish
        if meta["adapter"] and card.is_file():
            card.unlink()
        copy_tokenizer(tokenizer_dir, tmp)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
