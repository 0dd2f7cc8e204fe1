"""sgpt's cache: what is made from installed files once and kept (Whisper base's CTranslate2
directory, GGUF bases dequantized), so that later runs map it instead of making it again.
Everything in it can be deleted at any time; it is made again when needed.

The cache is ``$SGPT_CACHE`` when that is set, else ``$XDG_CACHE_HOME/sgpt`` (by default
``~/.cache/sgpt``). An entry is a directory written beside its place under a temporary name
and renamed into place only when whole, with a manifest of its files' sizes: a killed or
concurrent run never leaves an entry that looks complete, and an entry whose files do not
have the manifest's sizes is made again, never used.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from sgpt.core.files import make_temp_dir

MANIFEST = "sgpt_cache.json"


def cache_root() -> Path:
    env = os.environ.get("SGPT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sgpt"


def read_manifest(entry: Path) -> dict | None:
    """The manifest of a complete entry (its files have the sizes it lists), else None."""
    try:
        with open(entry / MANIFEST, encoding="utf-8") as f:
            manifest = json.load(f)
        sizes = manifest["files"]
        if all((entry / name).stat().st_size == size for name, size in sizes.items()):
            return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def make_entry(entry: Path, fill: Callable[[Path], None], info: dict | None = None) -> Path:
    """Make ``entry`` anew: ``fill(tmp)`` writes its files into a temporary directory beside
    it, which gets a manifest (``info`` and the files' sizes) and replaces what is there. If
    another process completes the same entry meanwhile, either copy is kept."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(entry.parent, f".{entry.name}.")
    try:
        fill(tmp)
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump({**(info or {}), "files": sizes}, f, indent=1)
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:
            if read_manifest(entry) is None:  # not another process having just finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
