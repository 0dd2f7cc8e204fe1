"""Files written atomically: a killed run never leaves a half file that looks whole."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from sgpt.core.errors import SgptError, first_line


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write through ``write(binary_file)`` to a temporary name, then rename onto ``path``."""
    parent = Path(path).absolute().parent
    try:  # a place that cannot be written (read-only, /proc...): one line naming it
        parent.mkdir(parents=True, exist_ok=True)  # as -o DIR/FILE means, like -o DIR
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=parent)
    except OSError as e:
        raise SgptError(f"{path}: cannot write there ({e.strerror or e})") from None
    try:
        os.fchmod(fd, file_mode())  # the mode open() gives, not mkstemp's private 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions open() gives a new file under this process's umask."""
    return 0o666 & ~_umask()


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new directory in ``parent`` to fill and then rename into place, with the permissions
    mkdir gives under the umask (mkdtemp's are private: a renamed output would stay so)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def write_json(path: str | os.PathLike, data, indent: int = 2) -> None:
    """Write ``data`` as indented JSON (UTF-8, a final newline) atomically."""
    text = json.dumps(data, indent=indent, ensure_ascii=False) + "\n"
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def read_yaml_mapping(path: str | os.PathLike) -> dict:
    """A YAML file of settings (a mapping; an empty file is {}); SgptError naming it if not."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        raise SgptError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SgptError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise SgptError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise SgptError(f"{path}: not YAML (nested too deep)") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise SgptError(f"{path}: not YAML ({first_line(e)})") from None
    if not isinstance(values, dict):
        raise SgptError(f"{path}: a YAML mapping of settings is expected")
    return values


# File names: most filesystems take 255 bytes; room is left for a temporary suffix.
MAX_NAME_BYTES = 200


def unwritable(path: str | os.PathLike) -> str | None:
    """Why ``path`` (a file or directory, existing or not) cannot be made or written, or
    None: its nearest existing ancestor must be a directory this process can write in."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else f"{path} cannot be written"
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot write in {parent}"
    return None


def safe_name(record_id: str, suffix: str) -> str:
    """A file name for a record id, inside its directory whatever the id, and one name per id:
    path separators and NUL become ``_`` and a leading dot ``_`` (no hidden files, no ``..``),
    and such an altered id, or one too long for a file name (cut), is given a hash of the whole
    id, so that ``a/b``, ``a\\b`` and ``a_b`` stay three names."""
    name = record_id.replace("/", "_").replace("\\", "_").replace("\0", "_")
    if name.startswith("."):
        name = "_" + name[1:]
    too_long = len((name + suffix).encode("utf-8")) > MAX_NAME_BYTES
    if name != record_id or too_long:
        digest = hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:16]
        room = MAX_NAME_BYTES - len(suffix.encode("utf-8")) - len(digest) - 1
        name = name.encode("utf-8")[:room].decode("utf-8", "ignore") + "-" + digest
    return name + suffix
