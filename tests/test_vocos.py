"""The unit Vocos (sgpt-vocode's "vocos" architecture): its inverse STFT, batches and chunks
that equal one utterance whole, a tiny model that learns one real utterance, training that
resumes to the same weights, and the CLI from training to vocoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_tool
from test_vocode_train import tiny_kmeans_units

from sgpt.core.audio import load_audio
from sgpt.core.errors import CheckpointError, SgptError
from sgpt.core.stream import dedup
from sgpt.vocode.architectures import load_vocoder
from sgpt.vocode.vocoder import Request, Vocoder
from sgpt.vocode.vocos import UnitVocos, VocosConfig, inverse_stft, stft
from sgpt.vocode.vocos_train import (
    Trainer,
    TrainOptions,
    jitter_runs,
    make_example,
    training_config,
)

K = 16
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**extra) -> dict:
    return {"arch": "vocos", "num_embeddings": K, "embedding_dim": 32, "dim": 64,
            "intermediate_dim": 128, "num_layers": 2,
            "dur_predictor_params": {"encoder_embed_dim": 32, "var_pred_hidden_dim": 16},
            **extra}


@pytest.fixture(scope="module")
def data(speech_dir, tmp_path_factory):
    """Records of real espeak-ng speech with tiny k-means units, as sgpt-units writes them."""
    d = tmp_path_factory.mktemp("vocos")
    paths = sorted(speech_dir.glob("*.wav"))
    records = []
    for path, frames in zip(paths, tiny_kmeans_units([load_audio(p) for p in paths], K)):
        units, durations = dedup(frames)
        records.append({"id": path.stem, "audio": str(path), "units": units,
                        "durations": durations, "units_meta": {"k": K, "dedup": True}})
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d, records


def test_inverse_stft_inverts_a_known_stft():
    torch.manual_seed(0)
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        wave = torch.randn(3, 320 * 40, dtype=dtype)
        window = torch.hann_window(1280, dtype=dtype)
        spec = stft(wave, 1280, 320, window)
        assert spec.shape == (3, 641, 40)
        back = inverse_stft(spec, torch.tensor([40, 40, 40]), 1280, 320, window)
        assert (back - wave).abs().max() < tolerance
        # frames beyond an utterance's length add nothing to it, nor to its envelope
        short = inverse_stft(spec[:1, :, :25], torch.tensor([25]), 1280, 320, window)
        padded = inverse_stft(torch.cat([spec[:1, :, :25], spec[1:2, :, 25:]], 2),
                              torch.tensor([25]), 1280, 320, window)
        assert torch.equal(short, padded[:, :25 * 320])


def _model(**extra) -> UnitVocos:
    torch.manual_seed(1)
    return UnitVocos(VocosConfig.from_dict(tiny_config(**extra))).eval()


def test_a_batch_and_chunks_equal_one_utterance_whole():
    model = _model()
    rng = np.random.default_rng(0)
    requests = [Request(f"r{i}", rng.integers(0, K, n).tolist(), rng.integers(1, 4, n).tolist(),
                        False) for i, n in enumerate((31, 7, 50))]
    alone = [Vocoder(model, batch_size=1)([r])[0] for r in requests]
    batched = Vocoder(model, batch_size=8, max_padding=10.0)(requests)
    chunked = Vocoder(model, batch_size=8, chunk=16)(requests)
    for a, b, c, r in zip(alone, batched, chunked, requests):
        assert len(a) == sum(r.durations) * 320 == len(b) == len(c)
        # float32 sums in another order: a few ulps of the waveform's scale
        bound = 1e-5 * max(1.0, float(np.abs(a).max()))
        assert np.abs(a - b).max() < bound
        assert np.abs(a - c).max() < bound  # the seam: none beyond rounding


def test_predicted_durations_and_speakers():
    model = _model(num_speakers=3)
    units, lengths = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]]), torch.tensor([4, 2])
    durations = model.predict_durations(units, lengths)
    assert (durations[0] >= 1).all() and (durations[1, :2] >= 1).all()
    assert (durations[1, 2:] == 0).all()
    one = Vocoder(model, speaker=0)([Request("a", [1, 2, 3], [2, 2, 2], False)])[0]
    two = Vocoder(model, speaker=2)([Request("a", [1, 2, 3], [2, 2, 2], False)])[0]
    assert len(one) == len(two) == 6 * 320 and not np.allclose(one, two)


@pytest.mark.parametrize("key, value, says", [
    ("dim", "wide", "'dim' must be a positive integer"),
    ("num_layers", 0, "'num_layers' must be a positive integer"),
    ("num_speakers", -1, "'num_speakers' must be a non-negative integer"),
    ("kernel_size", 4, "'kernel_size' must be odd"),
    ("n_fft", 100, "'n_fft' must be even and at least code_hop_size"),
])
def test_a_bad_config_names_the_key(key, value, says):
    with pytest.raises(CheckpointError, match=says):
        VocosConfig.from_dict(tiny_config(**{key: value}), "c.json")


def _train(d, records, out, steps, **extra):
    config = d / "config.json"
    config.write_text(json.dumps(tiny_config(**extra)))
    opts = TrainOptions(output=str(out), steps=steps, checkpoint_interval=1000, log_interval=50)
    cfg = training_config(opts, str(config))
    trainer = Trainer(cfg, opts, torch.device("cpu"), None, info=lambda m: None)
    trainer.train([make_example(r, cfg) for r in records])
    return trainer


def test_a_tiny_model_learns_one_utterance(data, tmp_path):
    """300 updates on one whole utterance (about 10 s): the mel L1 falls from about 2.3 to
    about 0.6 (checked: below 0.8, a third of where it starts), the duration loss too."""
    d, records = data
    frames = len(load_audio(records[0]["audio"])) // 320
    _train(d, records[:1], tmp_path / "v", 300, batch_size=1, segment_size=frames * 320,
           learning_rate=0.002)
    log = [json.loads(line) for line in (tmp_path / "v" / "train_log.jsonl").open()]
    updates = [e for e in log if "run" not in e]
    first, last = updates[0], updates[-1]
    assert last["step"] == 300
    assert first["mel_error"] > 1.8 and last["mel_error"] < 0.8, (first, last)
    assert last["loss_dur"] < first["loss_dur"] / 4


def test_jittered_runs_keep_their_units_a_frame_longer_or_shorter():
    codes = np.array([3, 3, 3, 5, 7, 7, 7, 7, 3, 3, 9])
    rng = np.random.default_rng(0)
    assert np.array_equal(jitter_runs(codes, 0.0, rng), np.arange(len(codes)))
    units, lengths = dedup(codes.tolist())
    changed = 0
    for _ in range(20):
        source = jitter_runs(codes, 1.0, rng)
        assert (np.diff(source) >= 0).all()  # in order, each new frame from its own run
        new_units, new_lengths = dedup(codes[source].tolist())
        assert new_units == units
        for n, m in zip(lengths, new_lengths):
            assert m in ({n - 1, n + 1} if n > 1 else {1, 2})
        changed += new_lengths != lengths
    assert changed == 20
    # a run stretched takes its frames in order, one of them twice; shrunk, it drops one
    seen = {tuple(jitter_runs(np.array([1, 1, 2]), 1.0, rng)) for _ in range(40)}
    assert seen == {(1, 2), (1, 2, 2), (0, 1, 1, 2), (0, 1, 1, 2, 2)}


def test_duration_jitter_is_checked(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(duration_jitter=1.5)))
    with pytest.raises(SgptError, match="config.json: 'duration_jitter' must be a number from"):
        training_config(TrainOptions(output=str(tmp_path / "v")), str(config))


@pytest.mark.parametrize("jitter", [0.0, 0.4])
def test_resume_equals_an_uninterrupted_run(data, tmp_path, jitter):
    d, records = data
    knobs = dict(batch_size=2, segment_size=320 * 20, duration_jitter=jitter)
    whole = _train(d, records, tmp_path / "whole", 6, **knobs)
    _train(d, records, tmp_path / "parts", 3, **knobs)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == [
        "config.json", "g_00000003.safetensors", "state", "train_log.jsonl"]
    resumed = _train(d, records, tmp_path / "parts", 6, **knobs)
    assert resumed.steps == 6
    for (name, a), b in zip(whole.generator.state_dict().items(),
                            resumed.generator.state_dict().values()):
        assert torch.equal(a, b), name
    # the optimizer's moments too: the next update would be the same
    a, b = whole.optim.state_dict()["state"], resumed.optim.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)


def test_cli_trains_resumes_keeps_and_vocodes(data, tmp_path):
    d, records = data
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(batch_size=2, segment_size=320 * 20)))
    out = tmp_path / "voc"
    args = ["train", "--config", str(config), "-o", str(out), "--checkpoint-interval", "1",
            "--keep", "1", "--device", "cpu", "--dtype", "float32", str(d / "train.jsonl")]
    r = run_tool("sgpt-vocode", *args, "--steps", "2")
    assert r.returncode == 0, r.stderr
    assert "training a vocos vocoder on" in r.stderr
    r = run_tool("sgpt-vocode", *args, "--steps", "3")
    assert r.returncode == 0 and "resuming from step 2" in r.stderr, r.stderr
    assert sorted(p.name for p in out.glob("g_*")) == ["g_00000003.safetensors"]
    model = load_vocoder(str(out))
    assert isinstance(model, UnitVocos) and not model.training
    r = run_tool("sgpt-vocode", "--vocoder", str(out), "-o", str(tmp_path / "wav"),
                 str(d / "train.jsonl"))
    assert r.returncode == 0, r.stderr
    for rec in records:
        info = sf.info(str(tmp_path / "wav" / f"{rec['id']}.wav"))
        assert info.frames == sum(rec["durations"]) * 320 and info.samplerate == 16000
    # another architecture's config on this run's directory is refused by name
    other = tmp_path / "other.json"
    other.write_text(json.dumps(tiny_config(dim=32)))
    r = run_tool("sgpt-vocode", "train", "--config", str(other), "-o", str(out),
                 str(d / "train.jsonl"))
    assert r.returncode == 1 and "its architecture differs" in r.stderr, r.stderr


def test_install_ships_the_newest_generator_in_bfloat16(data, tmp_path):
    """examples/tiny/install.py on a vocos run: the newest generator alone (no optimizer
    state), its weights rounded to bfloat16 (half the bytes), which the tools load as the
    float32 model of those rounded weights; an installed one installs to the same bytes."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "tiny" / "install.py"
    spec = importlib.util.spec_from_file_location("install", script)
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    d, records = data
    trained = _train(d, records, tmp_path / "run", 3, batch_size=2, segment_size=320 * 20)
    shipped, again = tmp_path / "shipped", tmp_path / "again"
    assert install.install_vocoder(str(tmp_path / "run"), str(shipped), torch.bfloat16) == \
        "g_00000003.safetensors"
    assert sorted(p.name for p in shipped.iterdir()) == ["config.json", "g_00000003.safetensors"]
    model = load_vocoder(str(shipped))
    for name, weight in trained.generator.state_dict().items():
        assert torch.equal(model.state_dict()[name], weight.to(torch.bfloat16).float()), name
    install.install_vocoder(str(shipped), str(again), torch.bfloat16)
    g = "g_00000003.safetensors"
    assert (again / g).read_bytes() == (shipped / g).read_bytes()
    assert (shipped / g).stat().st_size < 0.6 * (tmp_path / "run" / g).stat().st_size
    # fine-tuning the installed one needs no --config: --init names the architecture (not a
    # config.json beside the new run's directory)
    (tmp_path / "config.json").write_text('{"arch": "hifigan"}')
    tuned = tmp_path / "tuned"
    r = run_tool("sgpt-vocode", "train", "--init", str(shipped), "-o", str(tuned), "--steps",
                 "1", "--batch-size", "2", "--segment-size", str(320 * 20),
                 str(d / "train.jsonl"))
    assert r.returncode == 0 and "training a vocos vocoder" in r.stderr, r.stderr
    assert isinstance(load_vocoder(str(tuned)), UnitVocos)
