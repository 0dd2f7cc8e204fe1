"""sgpt-vocode as users run it: real pipes, a published-layout checkpoint, bad input."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_tool, tool
from fakes.hifigan import (
    fabricate_vocoder,
    multispeaker,
    one_torch_thread,
    small_config,
    without_duration_predictor,
)

GOOD = [
    {"id": "a", "units": [1, 5, 9, 5], "durations": [2, 1, 3, 2], "text": "kept",
     "units_meta": {"k": 100, "dedup": True}},
    {"id": "b", "units": [7, 7, 3, 3, 3, 60], "units_meta": {"dedup": False}},
    {"id": "c", "units": [42, 17, 99, 0]},
]


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def vocoder(tmp_path_factory):
    return fabricate_vocoder(tmp_path_factory.mktemp("vocoder"), small_config(), seed=7)


def vocode(vocoder, *args, **kw):
    return run_tool("sgpt-vocode", "--vocoder", vocoder, *args, **kw)


def test_writes_wavs_and_records_that_pipe_on(vocoder, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(jsonl(GOOD))
    out = tmp_path / "out"
    r = vocode(vocoder, "-o", out, src)
    assert r.returncode == 0, r.stderr
    recs = records(r.stdout)
    assert [x["id"] for x in recs] == ["a", "b", "c"]
    assert recs[0]["text"] == "kept" and recs[0]["units_meta"]["k"] == 100
    for rec in recs:
        data, rate = sf.read(rec["audio"])
        assert rate == 16000 and rec["audio"] == str(out / f"{rec['id']}.wav")
        assert rec["seconds"] == pytest.approx(len(data) / 16000, abs=1e-4)
    assert recs[0]["seconds"] == pytest.approx(8 * 0.02)  # the record's durations, exactly
    assert recs[1]["seconds"] == pytest.approx(6 * 0.02)  # .km-style: one frame per unit
    assert not [p for p in os.listdir(out) if not p.endswith(".wav")]  # no temp files left

    # a re-run resumes: nothing is vocoded again, the same records come out
    before = {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out)}
    again = vocode(vocoder, "-o", out, src)
    assert again.returncode == 0 and records(again.stdout) == recs
    assert before == {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out)}
    over = vocode(vocoder, "-o", out, "--overwrite", src)
    assert over.returncode == 0 and before != {p: os.stat(out / p).st_mtime_ns
                                               for p in os.listdir(out)}


def test_unit_lines_on_stdin_and_one_wav_stream(vocoder, tmp_path):
    lines = "<sosp><1><5><9><eosp>\n<sosp> <7> <3> <eosp>\n12 12 13 40\n"
    r = vocode(vocoder, "-o", tmp_path, "-", input=lines)
    assert r.returncode == 0, r.stderr
    recs = records(r.stdout)
    assert [x["id"] for x in recs] == ["stdin_1", "stdin_2", "stdin_3"]
    stream = vocode(vocoder, "-o", "-", input=lines.encode())
    assert stream.returncode == 0, stream.stderr
    audio, rate = sf.read(io.BytesIO(stream.stdout), dtype="int16")
    parts = [sf.read(rec["audio"], dtype="int16")[0] for rec in recs]
    assert rate == 16000 and np.array_equal(audio, np.concatenate(parts))
    # a pipe gets sox's "length unknown" sizes (sox reads on without a warning) ...
    assert stream.stdout[40:44] == (0x7FFFF000).to_bytes(4, "little")
    sox = subprocess.run(["sox", "-t", "wav", "-", "-n", "stat"], input=stream.stdout,
                         capture_output=True, text=False)
    assert sox.returncode == 0 and b"WARN" not in sox.stderr
    assert f"Samples read: {len(audio)}".split() == sox.stderr.decode().splitlines()[0].split()
    # ... a file gets exact ones, written once the stream ends
    wav = tmp_path / "stream.wav"
    with open(wav, "wb") as f:
        r = subprocess.run([tool("sgpt-vocode"), "--vocoder", vocoder, "-o", "-"],
                           input=lines.encode(), stdout=f, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    assert wav.read_bytes()[40:44] == (2 * len(audio)).to_bytes(4, "little")
    assert np.array_equal(sf.read(wav, dtype="int16")[0], audio)


def test_batches_and_chunks_give_the_same_audio(vocoder, tmp_path):
    long = {"id": "long", "units": list(range(0, 100, 2)) * 2}
    src = tmp_path / "in.jsonl"
    src.write_text(jsonl([*GOOD, long]))
    outs = {}
    for name, args in [("one", ["--batch-size", "1"]), ("many", ["--batch-size", "8"]),
                       ("chunk", ["--chunk", "30", "--batch-size", "3"])]:
        r = vocode(vocoder, "-o", "-", *args, src, input=b"")
        assert r.returncode == 0, r.stderr
        outs[name] = sf.read(io.BytesIO(r.stdout), dtype="int16")[0].astype(int)
    assert np.abs(outs["one"] - outs["many"]).max() <= 1  # float rounding, at most 1 LSB
    assert np.abs(outs["one"] - outs["chunk"]).max() <= 1


BAD = [
    ('{"id": "range", "units": [1, 100]}',
     "range: unit 100 in 'units' is outside 0..99 (this vocoder has 100 units)"),
    ('{"id": "neg", "units": [1, -2]}', "neg: 'units' must be a list of integers >= 0"),
    ('{"id": "empty", "units": []}', "empty: 'units' is empty"),
    ('{"id": "dur", "units": [1, 2], "durations": [3]}', "dur: 'durations' and 'units' differ"),
    ('{"id": "none", "text": "no units"}', "none: no 'units' to vocode"),
    ('{"id": "k", "units": [1], "units_meta": {"k": 1000}}', "k: units are from k-means"),
    ('{"id": "trunc", "units": [1, 2', "bad.jsonl:9: malformed JSON"),
    ("<sosp><eosp>", "bad_10: 'units' is empty"),
    ("hello", "bad.jsonl:11: not a JSON record"),
]


def test_bad_records_are_named_and_the_rest_vocoded(vocoder, tmp_path):
    src = tmp_path / "bad.jsonl"
    good = [json.dumps(r) for r in GOOD]
    bad = [line for line, _ in BAD]
    src.write_text("\n".join([good[0], *bad[:5], good[1], *bad[5:], good[2]]) + "\n")
    r = vocode(vocoder, "-o", tmp_path / "out", src)
    assert r.returncode == 1
    assert [x["id"] for x in records(r.stdout)] == ["a", "b", "c"]
    errors = r.stderr.strip().splitlines()
    assert len(errors) == len(BAD) and "Traceback" not in r.stderr
    for line, (_, message) in zip(errors, BAD):
        assert line.startswith("sgpt-vocode: error: ") and message in line, line
    strict = vocode(vocoder, "-o", tmp_path / "strict", "--strict", src)
    assert strict.returncode == 1 and len(strict.stderr.strip().splitlines()) == 1
    assert [x["id"] for x in records(strict.stdout)] == ["a"]


def test_file_names_from_any_id_stay_in_the_directory(vocoder, tmp_path):
    ids = ["..", "../../escape", ".hidden", "_hidden", "x" * 300, "x" * 299 + "y", "a/b", "a\\b",
           "a_b", "caf\u00e9"]
    out = tmp_path / "deep" / "out"
    r = vocode(vocoder, "-o", out, input=jsonl([{"id": i, "units": [1, 2]} for i in ids]))
    assert r.returncode == 0, r.stderr
    files = {rec["id"]: Path(rec["audio"]) for rec in records(r.stdout)}
    assert list(files) == ids
    assert all(f.parent == out and f.is_file() for f in files.values())
    names = [f.name for f in files.values()]
    assert len(set(names)) == len(ids) and not any(n.startswith(".") for n in names)
    assert all(len(n.encode()) <= 200 for n in names) and files["caf\u00e9"].name == "caf\u00e9.wav"
    assert files["a_b"].name == "a_b.wav" and files["_hidden"].name == "_hidden.wav"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]  # nothing escaped


def test_a_record_asking_for_too_much_audio_is_refused_before_any_allocation(vocoder,
                                                                             tmp_path):
    hostile = [{"id": "long", "units": [1, 2], "durations": [10_000_000, 10_000_000]},
               {"id": "many", "units": [1, 2] * 500_000},
               {"id": "ok", "units": [1, 2, 3], "durations": [2, 2, 2]}]
    r = vocode(vocoder, "-o", tmp_path / "out", "--max-seconds", 600, input=jsonl(hostile))
    assert r.returncode == 1, r.stderr
    errors = r.stderr.strip().splitlines()
    assert [e.split(": ")[2] for e in errors] == ["long", "many"], errors
    assert all("s of audio asked for" in e and "over --max-seconds 600" in e for e in errors)
    assert [rec["id"] for rec in records(r.stdout)] == ["ok"]


def test_usage_and_checkpoint_errors(vocoder, tmp_path):
    r = run_tool("sgpt-vocode", "-o", tmp_path, input="1 2 3\n")
    assert r.returncode == 2 and "--vocoder" in r.stderr and "config.json" in r.stderr
    r = vocode(vocoder, input="1 2 3\n")
    assert r.returncode == 2 and "-o DIR" in r.stderr
    r = vocode(vocoder, "-o", tmp_path, "--speaker", "1", input="1 2 3\n")
    assert r.returncode == 2 and "one speaker" in r.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    g = (vocoder / "g_00500000").read_bytes()
    (broken / "g_00000010").write_bytes(g[:len(g) // 3])
    (broken / "config.json").write_text((vocoder / "config.json").read_text())
    r = vocode(broken, "-o", tmp_path, input="1 2 3\n")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"sgpt-vocode: error: {broken / 'g_00000010'}: not a readable")

    cfg = json.loads((vocoder / "config.json").read_text())
    del cfg["upsample_rates"], cfg["num_embeddings"]
    (tmp_path / "partial.json").write_text(json.dumps(cfg))
    r = vocode(vocoder / "g_00500000", "--config", tmp_path / "partial.json", "-o", tmp_path,
               input="1 2 3\n")
    assert r.returncode == 1
    assert (f"{tmp_path / 'partial.json'}: missing field(s) upsample_rates, num_embeddings"
            in r.stderr)


def test_speakers_and_duration_prediction(tmp_path):
    spk = fabricate_vocoder(tmp_path / "spk", multispeaker(small_config(), 3), seed=8)
    waves = []
    for speaker in ("1", "2"):
        r = vocode(spk, "-o", "-", "--speaker", speaker, "--dur-prediction", "off",
                   input=b"<sosp><1><2><3><eosp>\n")
        assert r.returncode == 0, r.stderr
        waves.append(sf.read(io.BytesIO(r.stdout))[0])
    assert len(waves[0]) == 3 * 320 == len(waves[1]) and np.abs(waves[0] - waves[1]).max() > 0
    r = vocode(spk, "-o", "-", "--speaker", "3", input=b"1 2\n")
    assert r.returncode == 2 and b"speakers 0 to 2" in r.stderr
    plain = fabricate_vocoder(tmp_path / "plain", without_duration_predictor(small_config()))
    r = vocode(plain, "-o", tmp_path, "--dur-prediction", "on", input="1 2\n")
    assert r.returncode == 2 and "no duration predictor" in r.stderr
    r = vocode(plain, "-o", tmp_path, input="<sosp><1><2><eosp>\n")
    assert r.returncode == 0 and records(r.stdout)[0]["seconds"] == 0.04
    assert "warning: deduplicated units without 'durations'" in r.stderr


def test_closed_pipe_ends_quietly(vocoder, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(jsonl([{"id": f"u{i}", "units": [i, i + 1]} for i in range(40)]))
    cmd = f"'{tool('sgpt-vocode')}' --vocoder '{vocoder}' -o '{tmp_path}' '{src}' | head -1"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 and r.stderr == ""


# A tool run with one more entry in a table: the entry as a plugin author writes it.
WITH_TOY = """
import sys
from sgpt.vocode.architectures import VOCODERS
VOCODERS["toy"] = "toy_vocoder:load"
from sgpt.cli.vocode import main
sys.argv[0] = "sgpt-vocode"
main()
"""


def test_a_new_vocoder_architecture_is_one_module_and_one_table_entry(tmp_path):
    plugins = str(Path(__file__).parent / "plugins")
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")]))}
    toy = tmp_path / "toy"
    toy.mkdir()
    (toy / "config.json").write_text(json.dumps({"arch": "toy", "k": 8}))
    records = jsonl([{"id": "a", "units": [1, 2, 3], "durations": [2, 1, 3]},
                     {"id": "b", "units": [7, 7, 7, 7], "units_meta": {"dedup": False}},
                     {"id": "bad", "units": [9]}])
    r = subprocess.run([sys.executable, "-c", WITH_TOY, "--vocoder", str(toy), "--chunk", "2",
                        "-o", str(tmp_path / "wav")], input=records, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 1, r.stderr
    assert "sgpt-vocode: error: bad: unit 9 in 'units' is outside 0..7 (this vocoder has 8 " \
           "units)" in r.stderr
    out = {rec["id"]: rec for rec in map(json.loads, r.stdout.splitlines())}
    assert sorted(out) == ["a", "b"]
    a, rate = sf.read(out["a"]["audio"])
    assert rate == 16_000 and len(a) == 6 * 320
    t = np.arange(320) / rate  # frame 0 is unit 1 (120 Hz), frame 2 unit 2 (140 Hz)
    np.testing.assert_allclose(a[:320], np.sin(2 * np.pi * 120 * t), atol=1e-4)
    np.testing.assert_allclose(a[640:960], np.sin(2 * np.pi * 140 * t), atol=1e-4)
    assert len(sf.read(out["b"]["audio"])[0]) == 4 * 320
    # without the entry: the arch is unknown, one line naming the config
    r = run_tool("sgpt-vocode", "--vocoder", toy, "-o", tmp_path / "wav2", input=records)
    assert r.returncode == 1
    assert f"{toy}/config.json: unknown vocoder arch 'toy' (use hifigan, vocos)" in r.stderr
