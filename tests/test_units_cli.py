"""sgpt-units as users run it: real espeak-ng speech, real pipes, real bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_tool, tool

K = 20


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture(scope="session")
def km(speech_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("km") / "km.npy"
    r = run_tool("sgpt-units", "learn-kmeans", "--encoder", "mfcc", "-k", K, "--seed", "1",
                 "-o", out, *sorted(speech_dir.glob("*.wav")))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def wavs(speech_dir):
    return sorted(str(p) for p in speech_dir.glob("*.wav"))


def encode(km, *args, **kw):
    return run_tool("sgpt-units", "--encoder", "mfcc", "--kmeans", km, *args, **kw)


def test_learn_kmeans_writes_centroids_and_sidecar(km):
    centroids = np.load(km)
    assert centroids.shape == (K, 39) and centroids.dtype == np.float32
    meta = json.loads(km.with_suffix(".json").read_text())
    assert meta["encoder"] == "mfcc" and meta["k"] == K and meta["dim"] == 39
    assert meta["inertia"] > 0 and meta["frames"] == meta["frames_seen"] > 300


def test_encode_writes_deduplicated_units_with_durations(km, wavs):
    r = encode(km, *wavs)
    assert r.returncode == 0, r.stderr
    recs = records(r.stdout)
    assert [x["id"] for x in recs] == ["s0", "s1", "s2"]
    for rec, path in zip(recs, wavs):
        assert rec["audio"] == path
        assert len(rec["units"]) == len(rec["durations"]) > 10
        assert all(0 <= u < K for u in rec["units"])
        assert all(a != b for a, b in zip(rec["units"], rec["units"][1:]))
        seconds = sf.info(path).duration
        assert abs(sum(rec["durations"]) - seconds * 50) <= 2
        assert rec["units_meta"] == {"encoder": "mfcc", "layer": None, "k": K,
                                     "frame_rate": 50.0, "dedup": True}


def test_formats_and_no_dedup(km, wavs):
    dedup = records(encode(km, wavs[0]).stdout)[0]
    sgpt_line = encode(km, "--format", "speechgpt", wavs[0]).stdout.strip()
    assert sgpt_line == "<sosp>" + "".join(f"<{u}>" for u in dedup["units"]) + "<eosp>"
    raw = encode(km, "--format", "fairseq", "--no-dedup", wavs[0]).stdout.split()
    expanded = [u for u, d in zip(dedup["units"], dedup["durations"]) for _ in range(d)]
    assert [int(u) for u in raw] == expanded


def test_batches_give_the_units_of_one_file_at_a_time(km, wavs):
    batched = encode(km, "--batch-seconds", "60", *wavs).stdout
    alone = "".join(encode(km, w).stdout for w in wavs)
    assert batched == alone


def test_stdin_paths_records_and_audio_bytes(km, wavs):
    by_path = records(encode(km, input="\n".join(wavs) + "\n").stdout)
    assert [x["id"] for x in by_path] == ["s0", "s1", "s2"]
    lines = [json.dumps({"id": "q1", "audio": wavs[1], "text": "hello", "extra": [1]})]
    rec = records(encode(km, "-", input="\n".join(lines)).stdout)[0]
    assert rec["text"] == "hello" and rec["extra"] == [1] and rec["id"] == "q1"
    assert rec["units"] == by_path[1]["units"]
    with open(wavs[2], "rb") as f:
        r = encode(km, "-", input=f.read())
    piped = json.loads(r.stdout)
    assert piped["id"] == "stdin" and piped["units"] == by_path[2]["units"]


def test_manifest(km, wavs, tmp_path):
    tsv = tmp_path / "train.tsv"
    root = str(tmp_path.parent)
    rels = [w.replace(root + "/", "") for w in wavs]
    tsv.write_text(root + "\n" + "".join(f"{r}\t{sf.info(w).frames}\n" for r, w in
                                         zip(rels, wavs)))
    r = encode(km, "--manifest", tsv, "--format", "fairseq")
    assert r.returncode == 0, r.stderr
    assert r.stdout == encode(km, "--format", "fairseq", *wavs).stdout


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_text("not audio, just text\n" * 20)
    sf.write(d / "short.wav", np.zeros(100, dtype=np.float32), 16000)
    sf.write(d / "nan.wav", np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    sf.write(d / "zeros.wav", np.zeros(16000, dtype=np.float32), 16000)  # silence is fine
    return d


def test_bad_files_are_named_and_the_good_ones_still_encoded(km, wavs, bad_corpus):
    bad = ["empty.wav", "text.wav", "short.wav", "nan.wav", "missing.wav"]
    args = [wavs[0], *[bad_corpus / b for b in bad], bad_corpus / "zeros.wav", wavs[1]]
    r = encode(km, *args)
    assert r.returncode == 1
    assert [x["id"] for x in records(r.stdout)] == ["s0", "zeros", "s1"]
    errors = r.stderr.strip().splitlines()
    assert len(errors) == len(bad), r.stderr
    for name, line in zip(bad, errors):
        assert line.startswith(f"sgpt-units: error: {bad_corpus / name}: ")
    assert "Traceback" not in r.stderr
    assert "empty.wav: empty file (0 bytes)" in errors[0]
    strict = encode(km, "--strict", wavs[0], bad_corpus / "text.wav", wavs[1])
    assert strict.returncode == 1 and len(records(strict.stdout)) == 1


def test_shards_partition_the_inputs_in_order(km, wavs):
    whole = encode(km, *wavs).stdout
    parts = [encode(km, "--shard", f"{i}/2", *wavs).stdout for i in range(2)]
    assert "".join(parts) == whole
    slurm = encode(km, *wavs, env={"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4",
                                   "SLURM_ARRAY_TASK_COUNT": "2"}).stdout
    assert slurm == parts[1]


def test_resume_after_a_killed_run(km, wavs, tmp_path):
    out = tmp_path / "u.jsonl"
    first = encode(km, wavs[0]).stdout
    # what a run killed after its first record leaves behind
    (tmp_path / "u.jsonl.partial").write_text(first + '{"id": "s1", "uni')
    (tmp_path / "u.jsonl.partial.ids").write_text('"s0"\n')
    r = encode(km, "-o", out, *wavs)
    assert r.returncode == 0 and "resuming: 1 of 3" in r.stderr
    assert out.read_text() == encode(km, *wavs).stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.jsonl"]
    again = encode(km, "-o", out, *wavs)
    assert "resuming: 3 of 3" in again.stderr and out.read_text().count("\n") == 3


def test_output_file_refuses_a_second_input_with_the_same_id(km, wavs, tmp_path):
    """A resumed -o skips ids it holds: a same-stem file elsewhere would be lost on re-run."""
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / "s0.wav"
    twin.write_bytes(Path(wavs[1]).read_bytes())
    out = tmp_path / "u.jsonl"
    r = encode(km, "-o", out, wavs[0], twin, wavs[2])
    assert r.returncode == 1
    assert r.stderr.startswith(f"sgpt-units: error: {twin}: id 's0' is already that of ")
    assert [x["audio"] for x in records(out.read_text())] == [wavs[0], wavs[2]]
    assert len(encode(km, wavs[0], twin).stdout.splitlines()) == 2  # stdout: both, as given


def test_usage_errors_exit_2(km, wavs):
    r = run_tool("sgpt-units", wavs[0])
    assert r.returncode == 2 and "no encoder given" in r.stderr
    r = run_tool("sgpt-units", "--encoder", "mfcc", wavs[0])
    assert r.returncode == 2 and "--kmeans" in r.stderr
    r = encode(km, "--shard", "3/2", wavs[0])
    assert r.returncode == 2 and "--shard" in r.stderr
    # a misspelt device or dtype is a usage error, like any other bad option value
    r = encode(km, "--device", "gpu", wavs[0])
    assert r.returncode == 2 and "'--device': 'gpu': use auto, cpu, cuda or cuda:N" in r.stderr
    r = encode(km, "--dtype", "fp8", wavs[0])
    assert r.returncode == 2 and "'--dtype': 'fp8'" in r.stderr
    r = encode(km, "--batch-seconds", "0", wavs[0])
    assert r.returncode == 2 and "--batch-seconds" in r.stderr
    # not an internal error after all the features are computed
    r = run_tool("sgpt-units", "learn-kmeans", "--encoder", "mfcc", "-k", "0", "-o", "x.npy",
                 wavs[0])
    assert r.returncode == 2 and "'-k'" in r.stderr and "x>=1" in r.stderr


def test_output_into_a_new_directory(km, wavs, tmp_path):
    """-o new/dir/FILE makes the directories, as sgpt-tokenize extend/pack -o DIR do."""
    r = encode(km, "-o", tmp_path / "new" / "u.jsonl", wavs[0])
    assert r.returncode == 0, r.stderr
    assert records((tmp_path / "new" / "u.jsonl").read_text())[0]["id"] == "s0"
    r = run_tool("sgpt-units", "learn-kmeans", "--encoder", "mfcc", "-k", "3", "-o",
                 tmp_path / "km" / "k3.npy", wavs[0])
    assert r.returncode == 0 and np.load(tmp_path / "km" / "k3.npy").shape == (3, 39)


def test_missing_manifest_is_one_plain_line(km, tmp_path):
    r = encode(km, "--manifest", tmp_path / "train.tsv")
    assert r.returncode == 1
    assert r.stderr == f"sgpt-units: error: {tmp_path / 'train.tsv'}: no such manifest file\n"
    r = encode(km, "--manifest", tmp_path)
    assert r.stderr == f"sgpt-units: error: {tmp_path}: is a directory, not a manifest file\n"


def test_wrong_kmeans_dim_is_one_clear_line(tmp_path, wavs):
    np.save(tmp_path / "km.npy", np.zeros((5, 7), dtype=np.float32))
    r = run_tool("sgpt-units", "--encoder", "mfcc", "--kmeans", tmp_path / "km.npy", wavs[0])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "dim 39" in r.stderr and "dim 7" in r.stderr


def test_closed_pipe_ends_quietly(km, wavs):
    cmd = f"'{tool('sgpt-units')}' --encoder mfcc --kmeans '{km}' {' '.join(wavs * 4)} | head -1"
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True,
                       text=True)
    assert len(r.stdout.splitlines()) == 1
    assert r.stderr == "" and r.returncode == 0


def test_published_layouts_mhubert_pt_and_sklearn_kmeans_bin(tmp_path, wavs):
    """The SpeechGPT set-up: an mHuBERT .pt and a joblib-pickled sklearn k-means .bin."""
    import joblib
    import torch
    from fakes.mhubert import make_mhubert_checkpoint
    from sklearn.cluster import MiniBatchKMeans

    from sgpt.core.audio import load_audio
    from sgpt.units.hubert import load_hubert

    ckpt = make_mhubert_checkpoint(tmp_path / "mhubert_base_vp_en_es_fr_it3.pt")
    dense = load_hubert(str(ckpt), layer=2)
    with torch.inference_mode():
        feats = []
        for w in wavs:
            wave = torch.from_numpy(load_audio(w))[None]
            f, n = dense(wave, torch.tensor([wave.shape[1]]))
            feats.append(f[0, : int(n[0])].numpy())
    km = MiniBatchKMeans(n_clusters=K, random_state=0, n_init=3).fit(np.concatenate(feats))
    joblib.dump(km, tmp_path / "km.bin")

    args = ["--checkpoint", ckpt, "--layer", "2", "--kmeans", tmp_path / "km.bin"]
    r = run_tool("sgpt-units", *args, "--no-dedup", *wavs)
    assert r.returncode == 0, r.stderr
    recs = records(r.stdout)
    for rec, f in zip(recs, feats):
        assert rec["units"] == km.predict(f).tolist()
        assert rec["units_meta"] == {"encoder": "hubert:mhubert_base_vp_en_es_fr_it3",
                                     "layer": 2, "k": K, "frame_rate": 50.0, "dedup": False}
    alone = "".join(run_tool("sgpt-units", *args, w).stdout for w in wavs)
    assert run_tool("sgpt-units", *args, "--batch-seconds", "30", *wavs).stdout == alone
    # the same model as a transformers directory: same units, and a quiet stderr
    dense.model.save_pretrained(tmp_path / "hf")
    hf = run_tool("sgpt-units", "--checkpoint", tmp_path / "hf", "--layer", "2", "--kmeans",
                  tmp_path / "km.bin", "--no-dedup", *wavs)
    assert hf.returncode == 0 and hf.stderr == ""
    assert [x["units"] for x in records(hf.stdout)] == [x["units"] for x in recs]
    bad = run_tool("sgpt-units", *args[:2], "--layer", "9", "--kmeans", tmp_path / "km.bin",
                   wavs[0])
    assert bad.returncode == 1 and "use 1 to 3" in bad.stderr and "Traceback" not in bad.stderr


# A tool run with one more entry in a table: the entry as a plugin author writes it.
WITH_TOY = """
import sys
from sgpt.units.encoders import DENSE_MODELS, DenseModel
DENSE_MODELS["toy"] = DenseModel("toy_encoder:load", "log energy and zero-crossing rate")
from sgpt.cli.units import main
sys.argv[0] = "sgpt-units"
main()
"""


def test_a_new_encoder_is_one_module_and_one_table_entry(wavs, tmp_path):
    plugins = str(Path(__file__).parent / "plugins")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")]))}

    def units(*args):
        return subprocess.run([sys.executable, "-c", WITH_TOY, *map(str, args)],
                              capture_output=True, text=True, env={**os.environ, **env})

    usage = " ".join(units("encode", "--help").stdout.split())
    assert "[hubert|mfcc|whisper|whisper-padded|toy]" in usage
    assert "toy (log energy and zero-crossing rate)" in usage
    km = tmp_path / "toy.npy"
    r = units("learn-kmeans", "--encoder", "toy", "-k", 4, "-o", km, *wavs)
    assert r.returncode == 0, r.stderr
    assert np.load(km).shape == (4, 2)
    r = units("--encoder", "toy", "--kmeans", km, *wavs)
    assert r.returncode == 0, r.stderr
    out = records(r.stdout)
    assert [len(rec["units"]) > 3 for rec in out] == [True] * len(wavs)
    assert out[0]["units_meta"] == {"encoder": "toy", "layer": None, "k": 4,
                                    "frame_rate": 50.0, "dedup": True}
    assert all(0 <= u < 4 for rec in out for u in rec["units"])
    # without the entry it is an unknown choice, a usage error
    r = run_tool("sgpt-units", "--encoder", "toy", "--kmeans", km, wavs[0])
    assert r.returncode == 2 and "'toy' is not one of" in r.stderr


def test_finished_records_are_written_every_few_files(wavs):
    """A window of audio is encoded, then written: one holds 16 files at most, so a run over
    many short files killed midway keeps all but the last few."""
    from sgpt.cli.common import Reporter
    from sgpt.cli.units import WINDOW_FILES, Item, windows

    items = [Item({"id": f"u{i}"}, w, w) for i, w in enumerate(wavs * 12)]  # 36 files
    sizes = [len(w) for w in windows(items, Reporter("sgpt-units"), 10 ** 12, lambda: None)]
    assert WINDOW_FILES == 16 and sizes == [16, 16, 4]


def test_binary_stdin_that_is_not_audio_is_one_error(km):
    noise = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))
    assert b"\0" in noise
    r = run_tool("sgpt-units", "--encoder", "mfcc", "--kmeans", km, input=noise)
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode().splitlines() == [
        "sgpt-units: error: stdin: neither an audio file nor lines of paths or records"]
