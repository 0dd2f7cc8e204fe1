"""sgpt-vocode train: a tiny run on real espeak-ng speech, resumed, loadable by fairseq."""

from __future__ import annotations

import json
import signal
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_tool, tool
from fakes.hifigan import one_torch_thread, small_config

from sgpt.core.audio import load_audio
from sgpt.core.errors import SgptError
from sgpt.core.stream import dedup
from sgpt.core.training import training_dtype
from sgpt.vocode.architectures import load_vocoder
from sgpt.vocode.hifigan import read_config
from sgpt.vocode.hifigan_train import (
    Trainer,
    TrainOptions,
    make_example,
    prune_checkpoints,
    training_config,
)

K = 16
TRAIN = ["--batch-size", "2", "--segment-size", "1920", "--checkpoint-interval", "1",
         "--log-interval", "1"]


def tiny_kmeans_units(waves: list[np.ndarray], k: int = K, seed: int = 0) -> list[list[int]]:
    """Units at 50 frames/s without any encoder: k-means over log spectra of 20 ms frames."""
    feats = []
    for wave in waves:
        n = len(wave) // 320
        frames = torch.from_numpy(wave[:n * 320]).view(n, 320) * torch.hann_window(320)
        feats.append(torch.log(torch.fft.rfft(frames).abs()[:, :80] + 1e-3))
    every = torch.cat(feats)
    g = torch.Generator().manual_seed(seed)
    centroids = every[torch.randperm(len(every), generator=g)[:k]].clone()
    for _ in range(10):
        labels = torch.cdist(every, centroids).argmin(1)
        for c in range(k):
            if (labels == c).any():
                centroids[c] = every[labels == c].mean(0)
    return [torch.cdist(f, centroids).argmin(1).tolist() for f in feats]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def data(speech_dir, tmp_path_factory):
    """Training records (as sgpt-units writes them) and a tiny config."""
    d = tmp_path_factory.mktemp("vocode_train")
    paths = sorted(speech_dir.glob("*.wav"))
    records = []
    for path, frames in zip(paths, tiny_kmeans_units([load_audio(p) for p in paths])):
        units, durations = dedup(frames)
        records.append({"id": path.stem, "audio": str(path), "units": units,
                        "durations": durations, "units_meta": {"k": K, "dedup": True}})
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    bad = [{"id": "missing", "audio": str(d / "nope.wav"), "units": [1], "durations": [2]},
           {"id": "nodur", "audio": str(paths[0]), "units": [1, 2, 3]},
           {**records[1], "id": "other", "audio": str(paths[0]), "durations": [
               d + 40 for d in records[1]["durations"]]}]
    (d / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    cfg = small_config(num_embeddings=K, discriminator_channel_divisor=8)
    (d / "config.json").write_text(json.dumps(cfg))
    return d, records


def train(d, out, steps, *extra):
    return run_tool("sgpt-vocode", "train", "--config", d / "config.json", "-o", out,
                    "--steps", steps, *TRAIN, *extra)


def log(out, runs: bool = False) -> list[dict]:
    """train_log.jsonl's update lines, or (``runs``) the lines each start writes."""
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [e for e in lines if ("run" in e) == runs]


def test_train_resume_and_load_in_fairseq(data, tmp_path):
    d, records = data
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    r = train(d, straight, 2, d / "train.jsonl")
    assert r.returncode == 0, r.stderr
    # every g_ is kept by default, only the newest do_ (needed only to resume)
    assert sorted(p.name for p in straight.iterdir()) == [
        "config.json", "do_00000002", "g_00000001", "g_00000002", "train_log.jsonl"]
    entries = log(straight)
    assert [e["step"] for e in entries] == [1, 2]
    for e in entries:
        for key in ("loss_gen_all", "mel_error", "loss_fm", "loss_adv", "loss_disc", "loss_dur"):
            assert np.isfinite(e[key]) and e[key] >= 0
    cfg = read_config(str(straight / "config.json"))
    assert cfg.num_embeddings == K and cfg.extra["batch_size"] == 2
    assert cfg.extra["segment_size"] == 1920

    # bad records are named and skipped; the run stops at 1, then resumes to 2
    r = train(d, resumed, 1, d / "train.jsonl", d / "bad.jsonl")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "sgpt-vocode: error: missing: " in r.stderr
    assert "sgpt-vocode: error: nodur: deduplicated units without 'durations'" in r.stderr
    assert "sgpt-vocode: error: other: " in r.stderr and "not its units?" in r.stderr
    r = train(d, resumed, 2, d / "train.jsonl")
    assert r.returncode == 0, r.stderr
    assert "resuming from step 1" in r.stderr
    assert [e["step"] for e in log(resumed)] == [1, 2]
    for name in ("g_00000002", "do_00000002"):
        a = torch.load(straight / name, weights_only=True)
        b = torch.load(resumed / name, weights_only=True)
        for part in ("generator", "mpd", "msd"):
            if part in a:
                assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), (name, part)
    assert torch.load(resumed / "do_00000002", weights_only=True)["steps"] == 2
    done = train(d, resumed, 2, d / "train.jsonl")
    assert done.returncode == 0 and "already holds step 2" in done.stderr

    # the result loads in fairseq's CodeHiFiGANVocoder and sounds the same there
    vocoder = pytest.importorskip("fairseq.models.text_to_speech.vocoder")
    ref = vocoder.CodeHiFiGANVocoder(str(straight / "g_00000002"),
                                     json.loads((straight / "config.json").read_text()))
    ours = load_vocoder(str(straight))
    units = torch.tensor([records[0]["units"][:30]])
    with torch.no_grad():
        want = ref({"code": units.clone()}, dur_prediction=True)
        got, _ = ours(units, predict_durations=True)
    assert (got[0] - want).abs().max() <= 1e-4

    # and sgpt-vocode vocodes the training records with it, at their own durations
    r = run_tool("sgpt-vocode", "--vocoder", straight, "-o", tmp_path / "wav",
                 d / "train.jsonl")
    assert r.returncode == 0, r.stderr
    for rec, src in zip(map(json.loads, r.stdout.splitlines()), records):
        assert sf.info(rec["audio"]).frames == 320 * sum(src["durations"])


def test_training_errors(data, tmp_path):
    d, _ = data
    r = train(d, tmp_path / "x", 1, d / "bad.jsonl")
    assert r.returncode == 1 and "no usable training records" in r.stderr
    cfg = json.loads((d / "config.json").read_text())
    (tmp_path / "other.json").write_text(json.dumps({**cfg, "upsample_initial_channel": 64}))
    (tmp_path / "y").mkdir()  # a run's directory: its config.json fixes the architecture
    (tmp_path / "y" / "config.json").write_text(json.dumps(cfg))
    r = run_tool("sgpt-vocode", "train", "--config", tmp_path / "other.json", "-o",
                 tmp_path / "y", "--steps", 2, d / "train.jsonl")
    assert r.returncode == 1 and "architecture differs" in r.stderr
    r = train(d, tmp_path / "z", 1, "--segment-size", "1000", d / "train.jsonl")
    assert r.returncode == 1 and "multiple of code_hop_size 320" in r.stderr


def test_bfloat16_autocast_step(data, tmp_path):
    """One update under bf16 autocast (what --dtype auto picks on AMX CPUs and CUDA): finite
    losses, float32 master weights in the g_ file, and a generator that loads."""
    d, records = data
    assert training_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert training_dtype("float32", torch.device("cpu")) is None
    with pytest.raises(SgptError, match="float16 is not supported"):
        training_dtype("float16", torch.device("cpu"))
    opts = TrainOptions(output=str(tmp_path / "bf16"), steps=1, batch_size=2,
                        segment_size=960, checkpoint_interval=1, log_interval=1)
    cfg = training_config(opts, str(d / "config.json"))
    trainer = Trainer(cfg, opts, torch.device("cpu"), torch.bfloat16, info=lambda _: None)
    entry = trainer.train([make_example(r, cfg) for r in records[:2]])
    assert all(np.isfinite(entry[k]) for k in ("loss_gen_all", "mel_error", "loss_dur"))
    g = torch.load(tmp_path / "bf16" / "g_00000001", weights_only=True)["generator"]
    assert all(v.dtype == torch.float32 for v in g.values())
    assert load_vocoder(str(tmp_path / "bf16")).cfg.num_embeddings == K


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes(data, tmp_path):
    """SIGTERM (what Slurm and timeout send) after the first logged update: the update in
    progress finishes, a g_/do_ pair is written although no checkpoint was due, the exit is
    143 with one line, and the same command resumes from there."""
    d, _ = data
    out = tmp_path / "run"

    def args(steps):
        return ["train", "--config", d / "config.json", "-o", out, "--steps", steps,
                "--batch-size", "2", "--segment-size", "1920", "--checkpoint-interval", "1000",
                "--log-interval", "1", "--no-progress", d / "train.jsonl"]

    proc = subprocess.Popen([tool("sgpt-vocode"), *map(str, args(1000))],
                            stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("sgpt-vocode: step 1:"):
                proc.send_signal(signal.SIGTERM)
                break
        lines += proc.stderr.readlines()
        assert proc.wait(timeout=120) == 143, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(lines)
    assert "Traceback" not in stderr
    saved = sorted(p.name for p in out.iterdir() if p.name.startswith(("g_", "do_")))
    assert len(saved) == 2 and saved[0][3:] == saved[1][2:], (saved, stderr)
    step = int(saved[1][2:])
    assert step >= 1
    assert lines[-1] == (f"sgpt-vocode: interrupted by SIGTERM: checkpoint of step {step} "
                         f"saved in {out}; run the same command again to resume\n")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert torch.load(out / saved[0], weights_only=True)["steps"] == step
    assert log(out)[-1]["step"] == step

    r = run_tool("sgpt-vocode", *args(step + 1))
    assert r.returncode == 0, r.stderr
    assert f"resuming from step {step}" in r.stderr
    updates = log(out)
    assert [e["step"] for e in updates][-2:] == [step, step + 1]
    assert [e["step"] for e in log(out, runs=True)] == [0, step]  # a line for each start
    elapsed = [e["elapsed_s"] for e in updates]  # training time, carried over the stop
    assert elapsed == sorted(elapsed) and elapsed[-1] > elapsed[-2] > 0


def test_keep_prunes_old_checkpoints(data, tmp_path):
    """--keep 2: the two newest g_ files and the newest do_ remain; a do_ pile left by an
    earlier run is cleared too, and the run still resumes from the newest pair."""
    d, _ = data
    out = tmp_path / "keep"
    r = train(d, out, 2, "--keep", "2", d / "train.jsonl")
    assert r.returncode == 0, r.stderr
    (out / "do_00000001").write_bytes((out / "do_00000002").read_bytes())  # an older pile
    r = train(d, out, 4, "--keep", "2", d / "train.jsonl")
    assert r.returncode == 0, r.stderr
    assert "resuming from step 2" in r.stderr
    assert sorted(p.name for p in out.iterdir() if p.name[:2] in ("g_", "do")) == [
        "do_00000004", "g_00000003", "g_00000004"]
    assert torch.load(out / "do_00000004", weights_only=True)["steps"] == 4
    assert load_vocoder(str(out)).cfg.num_embeddings == K


def test_prune_leaves_later_and_foreign_files(tmp_path):
    names = ["g_00000001", "do_00000001", "g_00000002", "do_00000002", "g_00000003",
             "g_00000009", "do_00000009", "do_notes", "g_best"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = prune_checkpoints(str(tmp_path), 3, keep=1)
    assert sorted(removed) == ["do_00000001", "do_00000002", "g_00000001", "g_00000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "do_00000009", "do_notes", "g_00000003", "g_00000009", "g_best"]
    (tmp_path / "do_00000002").write_bytes(b"x")
    assert prune_checkpoints(str(tmp_path), 3, keep=None) == ["do_00000002"]


def test_generator_alone_before_discriminator_start_step(data, tmp_path):
    """discriminator_start_step: the first updates train the generator on the mel (and
    duration) loss alone; the discriminators start learning at that step."""
    d, records = data
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                    "discriminator_start_step": 2}))
    opts = TrainOptions(output=str(tmp_path / "warm"), steps=2, batch_size=2,
                        segment_size=960, checkpoint_interval=1, log_interval=1)
    cfg = training_config(opts, str(cfg_file))
    trainer = Trainer(cfg, opts, torch.device("cpu"), None, info=lambda _: None)
    disc = {n: p.detach().clone() for n, p in trainer.mpd.named_parameters()}
    gen = {n: p.detach().clone() for n, p in trainer.generator.named_parameters()}
    examples = [make_example(r, cfg) for r in records[:2]]
    entry = trainer.train(examples)
    assert "loss_disc" not in entry and entry["loss_gen_all"] == pytest.approx(
        45 * entry["mel_error"] + entry["loss_dur"], rel=1e-5)
    assert all(torch.equal(p, disc[n]) for n, p in trainer.mpd.named_parameters())
    assert any(not torch.equal(p, gen[n]) for n, p in trainer.generator.named_parameters())
    trainer.opts.steps = 3  # the third update (index 2) is a full one
    entry = trainer.train(examples)
    assert "loss_disc" in entry and entry["step"] == 3
    assert any(not torch.equal(p, disc[n]) for n, p in trainer.mpd.named_parameters())


def test_init_fine_tunes_another_vocoders_generator(data, tmp_path):
    """--init: a new run starts from another run's generator (its config too, when none is
    given), at update 0 with fresh discriminators; a resumable run ignores it."""
    d, _ = data
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert train(d, base, 2, d / "train.jsonl").returncode == 0
    # at learning rate 0, the run's one update leaves base's newest generator as it was
    r = run_tool("sgpt-vocode", "train", "--init", base, "-o", tuned, "--steps", 1,
                 *TRAIN, "--lr", "0", d / "train.jsonl")
    assert r.returncode == 0, r.stderr
    assert f"starting from the generator of {base / 'g_00000002'}" in r.stderr
    assert read_config(str(tuned / "config.json")).num_embeddings == K
    assert [e["step"] for e in log(tuned)] == [1]
    start = torch.load(base / "g_00000002", weights_only=True)["generator"]
    got = torch.load(tuned / "g_00000001", weights_only=True)["generator"]
    assert all(torch.equal(got[k], start[k]) for k in start)
    r = run_tool("sgpt-vocode", "train", "--init", base, "-o", tuned, "--steps", 2,
                 *TRAIN, d / "train.jsonl")
    assert r.returncode == 0 and "resuming from step 1" in r.stderr
    assert "starting from" not in r.stderr

    # another architecture, or a file that is not a generator: one line, exit 1
    cfg = json.loads((d / "config.json").read_text())
    (tmp_path / "other.json").write_text(json.dumps({**cfg, "upsample_initial_channel": 64}))
    r = run_tool("sgpt-vocode", "train", "--init", base, "--config", tmp_path / "other.json",
                 "-o", tmp_path / "x", "--steps", 1, *TRAIN, d / "train.jsonl")
    assert r.returncode == 1 and "architecture differs" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_tool("sgpt-vocode", "train", "--init", base / "do_00000002", "--config",
                 d / "config.json", "-o", tmp_path / "y", "--steps", 1, *TRAIN,
                 d / "train.jsonl")
    assert r.returncode == 1 and "no 'generator' state dict" in r.stderr
