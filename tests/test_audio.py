import io
import os

import numpy as np
import pytest
import soundfile as sf

from sgpt.core.audio import load_audio, load_audio_bytes, looks_like_audio, write_wav
from sgpt.core.errors import AudioError


def tone(sr: int, seconds: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.mark.parametrize("fmt, subtype, sr, channels", [
    ("WAV", "PCM_16", 16000, 1), ("WAV", "PCM_24", 44100, 2), ("WAV", "FLOAT", 8000, 1),
    ("FLAC", "PCM_16", 22050, 1), ("OGG", "VORBIS", 48000, 2), ("WAV", "PCM_U8", 16000, 1),
])
def test_any_format_rate_and_channels_become_16k_mono(tmp_path, fmt, subtype, sr, channels):
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, tone(sr, 0.5, channels), sr, format=fmt, subtype=subtype)
    audio = load_audio(str(path))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 8000) <= 1
    assert 0.4 < np.abs(audio).max() < 0.6


def test_stereo_is_averaged(tmp_path):
    x = np.stack([np.full(1600, 0.5), np.full(1600, -0.1)], axis=1)
    sf.write(tmp_path / "s.wav", x, 16000, subtype="FLOAT")
    assert np.allclose(load_audio(str(tmp_path / "s.wav")), 0.2)


def test_real_speech(speech_dir):
    audio = load_audio(str(speech_dir / "s0.wav"))  # espeak-ng: 22.05 kHz
    assert 1.0 < len(audio) / 16000 < 5.0


@pytest.mark.parametrize("make, reason", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (lambda p: p.write_bytes(b"this is not audio at all" * 50), "not audio"),
    (lambda p: p.write_bytes(open(__file__, "rb").read()[:10]), "not audio"),
    (lambda p: sf.write(p, np.zeros((0,)), 16000), "empty audio"),
    (lambda p: sf.write(p, np.zeros(100), 16000), "too short"),
    (lambda p: sf.write(p, np.full(16000, np.nan), 16000, subtype="FLOAT"), "NaN"),
    (lambda p: sf.write(p, np.full(16000, np.inf), 16000, subtype="FLOAT"), "NaN or Inf"),
    (lambda p: os.mkdir(p), "is a directory"),
])
def test_unusable_audio_raises_one_clear_reason(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as e:
        load_audio(str(path))
    assert reason in str(e.value)


def test_truncated_wav_reads_what_is_there_or_fails_clearly(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, tone(16000, 1.0), 16000, format="WAV")
    (tmp_path / "t.wav").write_bytes(buf.getvalue()[:8000])
    audio = load_audio(str(tmp_path / "t.wav"))
    assert 0 < len(audio) < 16000


def test_bytes_and_write_round_trip(tmp_path):
    x = (tone(16000, 0.25) * 0.9).astype(np.float32)
    write_wav(str(tmp_path / "o.wav"), x)
    assert [p.name for p in tmp_path.iterdir()] == ["o.wav"]
    data = (tmp_path / "o.wav").read_bytes()
    assert looks_like_audio(data[:4]) and not looks_like_audio(b"a.wa")
    assert np.abs(load_audio_bytes(data) - x).max() < 1e-4
