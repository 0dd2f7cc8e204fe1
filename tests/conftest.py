"""Shared fixtures: real speech from espeak-ng, and running the installed tools."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
# No test picks up the embedded default by accident (a tool given no model flags stays a
# usage error); the tests of the default set SGPT_DEFAULT themselves.
os.environ["SGPT_DEFAULT"] = "none"

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "speech units let a language model listen and speak",
    "please tell me the weather for tomorrow morning",
]


def demo_defaults() -> tuple[str, str]:
    """scripts/demo.sh's default question and espeak-ng voice."""
    demo = (Path(__file__).resolve().parents[1] / "scripts" / "demo.sh").read_text()
    return tuple(re.search(rf"{name}=\$\{{{n}:-([^}}]*)\}}", demo).group(1)
                 for n, name in ((2, "question"), (3, "voice")))


def speak(text: str, path: Path, voice: str = "en-us", speed: int = 160) -> Path:
    """Real speech: espeak-ng's 22.05 kHz 16-bit WAV of ``text``."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (.ci/run installs it)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text],
                   check=True, capture_output=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def sgpt_cache(tmp_path_factory):
    """sgpt's cache (Whisper base assembled, GGUF bases dequantized) is the tests' own, shared
    by the tests of a run and the tools they start, never the user's."""
    os.environ["SGPT_CACHE"] = str(tmp_path_factory.mktemp("sgpt-cache"))
    yield
    os.environ.pop("SGPT_CACHE", None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models only lose time to a second thread (more so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory) -> Path:
    """Three espeak-ng sentences: s0.wav, s1.wav, s2.wav."""
    d = tmp_path_factory.mktemp("speech")
    for i, text in enumerate(SENTENCES):
        speak(text, d / f"s{i}.wav", voice=["en-us", "en-gb", "en-us+f3"][i])
    return d


def tool(name: str) -> str:
    """The installed console script (next to this interpreter), else the checkout's bin/."""
    installed = Path(sys.executable).parent / name
    if installed.exists():
        return str(installed)
    return str(Path(__file__).resolve().parents[1] / "bin" / name)


def run_tool(name: str, *args, input: bytes | str | None = None, env: dict | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a tool as a user would; stdout and stderr as text (stdout bytes if input is)."""
    full_env = {**os.environ, **(env or {})}
    text = not isinstance(input, bytes)
    return subprocess.run([tool(name), *map(str, args)], input=input, capture_output=True,
                          text=text, env=full_env, cwd=cwd, timeout=600)
