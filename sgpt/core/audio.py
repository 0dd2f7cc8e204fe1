"""Audio in and out: anything libsndfile reads becomes 16 kHz mono float32.

Integer or float PCM, any sample rate (resampled with soxr), any channel count (averaged
to mono). Audio that cannot be used raises AudioError with one line saying why.
"""

from __future__ import annotations

import io
import os

import numpy as np
import soundfile as sf
import soxr

from sgpt.core.errors import AudioError
from sgpt.core.files import write_atomic

SAMPLE_RATE = 16000
MIN_SAMPLES = 400  # one 25 ms analysis window at 16 kHz: the least any encoder can use

# First bytes of the containers libsndfile reads, to tell audio on stdin from a path list.
AUDIO_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"FORM", b".snd", b"caff", b"ID3")


def looks_like_audio(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a stream) starts an audio container."""
    return head.startswith(AUDIO_MAGIC)


def _check_path(path) -> None:
    if not os.path.exists(path):
        raise AudioError("no such file")
    if os.path.isdir(path):
        raise AudioError("is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError("empty file (0 bytes), not audio")


def _unreadable(e: Exception) -> AudioError:
    if isinstance(e, OSError):
        return AudioError(e.strerror or str(e))
    detail = str(e).split(":")[-1].strip() or "unreadable"
    return AudioError(f"not audio that libsndfile can read ({detail})")


UNREADABLE = (sf.LibsndfileError, RuntimeError, TypeError, OSError)


def check_audio_file(path: str | os.PathLike) -> None:
    """Raise AudioError unless ``path`` is audio that load_audio reads, from its header alone
    (a test set is checked before any tool runs, without decoding every file)."""
    _check_path(path)
    try:
        info = sf.info(str(path))
    except UNREADABLE as e:
        raise _unreadable(e) from None
    if info.frames <= 0:
        raise AudioError("empty audio (0 samples)")
    if info.frames * SAMPLE_RATE < MIN_SAMPLES * info.samplerate:
        raise AudioError(f"too short ({info.frames / info.samplerate:.3f} s; at least "
                         f"{MIN_SAMPLES / SAMPLE_RATE:.3f} s needed)")


def load_audio(source, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read ``source`` (a path or a binary file object) as mono float32 at ``sample_rate``."""
    if isinstance(source, (str, os.PathLike)):
        _check_path(source)
    try:
        data, sr = sf.read(source, dtype="float32", always_2d=True)
    except UNREADABLE as e:
        raise _unreadable(e) from None
    if data.shape[0] == 0:
        raise AudioError("empty audio (0 samples)")
    audio = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(audio).all():
        raise AudioError("audio holds NaN or Inf samples")
    if sr != sample_rate:
        audio = soxr.resample(audio, sr, sample_rate, quality="HQ").astype(np.float32)
    if audio.shape[0] < MIN_SAMPLES * sample_rate // SAMPLE_RATE:
        raise AudioError(
            f"too short ({audio.shape[0] / sample_rate:.3f} s; at least "
            f"{MIN_SAMPLES / SAMPLE_RATE:.3f} s needed)"
        )
    return np.ascontiguousarray(audio, dtype=np.float32)


def load_audio_bytes(data: bytes, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Like load_audio, for the bytes of a whole audio file (e.g. read from stdin)."""
    return load_audio(io.BytesIO(data), sample_rate)


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit PCM WAV file's bytes."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_wav(path: str, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a 16-bit PCM WAV atomically: a killed run never leaves a half file."""
    write_atomic(path, lambda f: f.write(wav_bytes(audio, sample_rate)))
