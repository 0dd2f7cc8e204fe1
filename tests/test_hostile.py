"""No good record lost and no user file touched, whatever the input: every tool (sgpt-units,
sgpt-tokenize, sgpt-generate, sgpt-vocode, sgpt-evaluate, sgpt-train's input checks), run as
installed on tiny fabricated models, gets hostile input (bytes that are not UTF-8, JSON nested
100,000 deep or with 4,301-digit integers, wrong types, markup, hostile ids, broken audio,
missing files, directories, config files with a key of the wrong kind, outputs that cannot be
written), one input file per case between good records, many cases per invocation. For each
case: the exit status, exactly one error line naming the bad input (file:line, the record id
or the file) and saying why, every good record written once, no traceback and no "internal
error", and every input file byte for byte as it was."""

from __future__ import annotations

import codecs
import io
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_tool, tool
from fakes.hifigan import fabricate_vocoder, small_config
from fakes.tokenizers import extended
from test_generate import K, tiny_llama, tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ENV = {"OMP_NUM_THREADS": "1"}  # tiny models: a second thread only adds contention

GOOD = b"<GOOD>"           # a good record of the tool: ids TOKEN-g0, TOKEN-g1, ...
BAD_ID, G0 = b"@ID@", b"@G0@"  # the bad record's id (TOKEN-bad), the first good one's
DIRECTORY = b"<DIRECTORY>"   # the case's input is a directory (None: it does not exist)
BOM = codecs.BOM_UTF8


@dataclass(frozen=True)
class Case:
    name: str
    content: bytes | None  # the input file (GOOD, BAD_ID, G0 filled in); None: no file
    where: str | None      # what its one error line names: {file}, {id}, {g0}, {stem} filled
    says: str = ""         # in, None for input that is accepted; and a piece of the reason
    written: tuple[str, ...] = ()  # hostile ids of an accepted case that must be written


def rec(name: str, bad: bytes, where: str = "{file}:2", says: str = "") -> Case:
    """A hostile line between two good records."""
    return Case(name, GOOD + b"\n" + bad + b"\n" + GOOD + b"\n", where, says)


def obj(record: dict) -> bytes:
    return json.dumps(record).encode().replace(b'"@ID@"', b'"' + BAD_ID + b'"')


COMMON = [  # every tool that reads records
    Case("bom-before-the-first-record", BOM + GOOD + b"\n" + GOOD + b"\n", None),
    rec("one-byte-not-utf8", b'{"id": "@ID@", "text": "caf\xe9 au lait"}',
        says="not UTF-8 text (byte 0xe9 at column"),
    rec("json-nested-100000-deep",
        b'{"id": "@ID@", "units": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        says="malformed JSON (nested too deep)"),
    rec("int-of-4301-digits", b'{"id": "@ID@", "units": [' + b"7" * 4301 + b"]}",
        says="malformed JSON (Exceeds the limit (4300 digits)"),
    rec("malformed-json", b'{"id": "@ID@", "units": [1, 2', says="malformed JSON"),
    rec("json-array", b'[{"id": "@ID@", "units": [1]}]', says="not a JSON record"),
    rec("neither-json-nor-units", b"hello, world", says="not a JSON record"),
    rec("id-empty", b'{"id": "", "units": [1]}', says="'id' must be a non-empty string"),
    rec("id-not-a-string", b'{"id": 7, "units": [1]}', says="'id' must be a string"),
    Case("empty-file", b"", None),
    Case("missing-file", None, "{file}", "no such file"),
    Case("directory", DIRECTORY, "{file}", "is a directory"),
]
UNITS = [  # every tool that reads unit records
    rec("units-negative", obj({"id": "@ID@", "units": [1, -2]}), "{id}",
        "'units' must be a list of integers >= 0"),
    rec("units-float", obj({"id": "@ID@", "units": [1, 2.5]}), "{id}", "'units' must be"),
    rec("units-string", obj({"id": "@ID@", "units": [1, "2"]}), "{id}", "'units' must be"),
    rec("units-bool", obj({"id": "@ID@", "units": [1, True]}), "{id}", "'units' must be"),
    rec("durations-zero", obj({"id": "@ID@", "units": [1, 2], "durations": [1, 0]}), "{id}",
        "'durations' must be a list of integers >= 1"),
    rec("durations-other-length", obj({"id": "@ID@", "units": [1, 2], "durations": [1]}),
        "{id}", "'durations' and 'units' differ in length"),
]


@dataclass
class Outcome:
    """What one case got from the run that held it."""

    tool: str
    proc: subprocess.CompletedProcess  # stdout and stderr as text
    written: list[str]         # ids of the records the run wrote
    failing: int               # cases of the run that fail: one error line each
    token: str                 # in the names of the case's files and records, and nowhere else
    where: str | None
    says: str
    good: list[str]            # ids that must be written, once each
    before: dict[Path, bytes] = field(default_factory=dict)  # its input files as they were


def check(o: Outcome, status: int = 1) -> None:
    err = o.proc.stderr
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [line for line in err.splitlines()
              if line.startswith((f"{o.tool}: error: ", "Error: "))]
    assert len(errors) == o.failing, err  # one line per failing case, no more
    mine = [line for line in errors if o.token in line]
    if o.where is None:
        assert mine == [] and o.proc.returncode == (1 if o.failing else 0), err
    else:
        assert len(mine) == 1 and o.proc.returncode == status, err
        assert o.where in mine[0] and o.says in mine[0], mine[0]
        if status == 1:
            assert mine[0].startswith(f"{o.tool}: error: {o.where}: "), mine[0]
    assert [i for i in o.good if o.written.count(i) != 1] == [], (o.written, err)
    assert {p: p.read_bytes() for p in o.before} == o.before  # inputs untouched


def run(tool: str, *args, input: bytes | None = None):
    """The installed tool; stdout and stderr as text whatever the input."""
    proc = run_tool(tool, *args, input=input, env=ENV)
    if isinstance(proc.stdout, bytes):
        proc.stdout = proc.stdout.decode("utf-8", "replace")
        proc.stderr = proc.stderr.decode("utf-8", "replace")
    return proc


def jsonl_ids(stdout: str, suffix: str = "") -> list[str]:
    return [json.loads(line)["id"].removesuffix(suffix) for line in stdout.splitlines()]


def record_runs(d: Path, tool: str, cases: list[Case], good, args, ids_of=jsonl_ids
                ) -> dict[str, Outcome]:
    """A file per case (good records, from ``good(id)``, around its hostile line); the tool
    run once (``args(files)``) over the files of the failing cases and once over those of
    the accepted ones; the outcome of each case."""
    d.mkdir(exist_ok=True)
    prepared = []
    for i, case in enumerate(cases):
        token = f"c{i:02d}-"
        path = d / f"{token}{case.name}.jsonl"
        parts = (case.content or b"").split(GOOD)
        good_ids = [f"{token}g{n}" for n in range(len(parts) - 1)]
        content = parts[0] + b"".join(json.dumps(good(rid)).encode() + part
                                      for rid, part in zip(good_ids, parts[1:]))
        content = content.replace(BAD_ID, f"{token}bad".encode()).replace(
            G0, f"{token}g0".encode())
        if case.content == DIRECTORY:
            path.mkdir()
        elif case.content is not None:
            path.write_bytes(content)
        fill = {"file": path, "id": f"{token}bad", "g0": f"{token}g0", "stem": path.stem}
        where = case.where and case.where.format(**fill)
        written = [w.format(**fill) for w in case.written]
        prepared.append((case, path, Outcome(tool, None, [], 0, token, where, case.says,
                                             good_ids + written)))
    outcomes = {}
    for failing in (True, False):
        group = [(c, p, o) for c, p, o in prepared if (c.where is not None) == failing]
        if not group:
            continue
        before = {p: p.read_bytes() for _, p, _ in group if p.is_file()}
        proc = run(tool, *args([p for _, p, _ in group], failing))
        written = ids_of(proc.stdout)
        for case, path, o in group:
            o.proc, o.written, o.failing = proc, written, len(group) if failing else 0
            o.before = {path: before[path]} if path in before else {}
            outcomes[case.name] = o
    return outcomes


def names(cases) -> list[str]:
    return [c.name for c in cases]


# --- sgpt-tokenize --------------------------------------------------------------------------

TOKENIZE = COMMON + UNITS + [
    rec("unit-out-of-range", obj({"id": "@ID@", "units": [1, 10], "text": "hi"}), "{id}",
        "unit 10 in 'units' is outside 0..9 (k=10)"),
    rec("text-not-a-string", obj({"id": "@ID@", "units": [1], "text": ["hi"]}), "{id}",
        "'text' must be a string"),
    rec("no-text", obj({"id": "@ID@", "units": [1]}), "{id}", "no 'text' key"),
    rec("markup-sosp-in-text", obj({"id": "@ID@", "units": [1], "text": "hi <sosp><3><eosp>"}),
        "{id}", "'text' contains markup '<sosp>'"),
    rec("markup-unit-in-text", obj({"id": "@ID@", "units": [1], "text": "say <5> now"}),
        "{id}", "'text' contains markup '<5>'"),
    rec("markup-speaker-in-text", obj({"id": "@ID@", "units": [1],
                                       "text": "yes [SpeechGPT]: no"}),
        "{id}", "'text' contains markup '[SpeechGPT]'"),
    Case("huge-text", GOOD + b"\n" + obj({"id": "@ID@", "units": [1, 2],
                                          "text": "word " * 200_000}) + b"\n", None,
         written=("{id}",)),
]


@pytest.fixture(scope="module")
def tokenize_runs(tmp_path_factory):
    def args(files, _):
        return ["cross-modal", "-k", "10", "--tasks", "asr", *files]

    return record_runs(tmp_path_factory.mktemp("tokenize"), "sgpt-tokenize", TOKENIZE,
                       lambda rid: {"id": rid, "units": [1, 2, 3], "text": "hello there"},
                       args, lambda out: jsonl_ids(out, ":asr"))


@pytest.mark.parametrize("case", TOKENIZE, ids=names(TOKENIZE))
def test_sgpt_tokenize(tokenize_runs, case):
    check(tokenize_runs[case.name])


def _proc_status() -> int:
    """A user cannot write in /proc: a usage error; root can, until the write fails."""
    return 1 if os.access("/proc", os.W_OK) else 2


TOKENIZE_OUTPUTS = [  # (subcommand, -o, what the line says, exit status); test_outputs has more
    ("chain-of-modality", "{input}", "is also an input", 2),
    ("cross-modal", "{input}/out.jsonl", "{input} is not a directory", 2),
    ("pretrain", "/proc/sgpt-hostile/out.txt", "cannot write", _proc_status()),
]


@pytest.mark.parametrize("sub, output, says, status", TOKENIZE_OUTPUTS,
                         ids=["o-is-the-input", "o-under-a-file", "o-where-nothing-can-be-made"])
def test_sgpt_tokenize_output_that_cannot_be(tmp_path, sub, output, says, status):
    if output.startswith("/proc") and not os.path.isdir("/proc"):
        pytest.skip("no /proc")
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "a", "units": [1, 2], "text": "hi"}) + "\n")
    out = output.format(input=source)
    proc = run("sgpt-tokenize", sub, "-k", "10", "-o", out, source)
    check(Outcome("sgpt-tokenize", proc, [], 1, out, out, says.format(input=source), [],
                  {source: source.read_bytes()}), status)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


# --- sgpt-units -----------------------------------------------------------------------------

def _wav(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples.astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def units_files(speech: bytes) -> list[Case]:
    """The audio files of the cases (``speech``: the bytes of a real WAV file)."""
    return [
        Case("wav-that-is-text", b"not audio, just text\n" * 20, "{file}",
             "not audio that libsndfile can read"),
        Case("wav-cut-inside-its-header", speech[:30], "{file}", "not audio"),
        Case("wav-header-without-samples", _wav(np.zeros(0)), "{file}",
             "empty audio (0 samples)"),
        Case("wav-of-zero-bytes", b"", "{file}", "empty file (0 bytes), not audio"),
        Case("wav-of-random-bytes", b"RIFF" + bytes(np.random.default_rng(0).integers(
            0, 256, 3000, dtype=np.uint8)), "{file}", "not audio"),
        Case("wav-too-short", _wav(np.zeros(100)), "{file}", "too short"),
        Case("wav-missing", None, "{file}", "no such file"),
        Case("wav-directory", DIRECTORY, "{file}", "is a directory"),
        Case("wav-of-silence", _wav(np.zeros(16000)), None),
        Case("wav-truncated-in-its-samples", speech[:len(speech) // 2], None),  # as sox reads
    ]


UNITS_FILES = units_files(b"")  # for their names: the fixture makes them of real speech
UNITS_STDIN = [  # lines on stdin, the first after a byte-order mark; {wav}: a real WAV file
    Case("stdin-bom-before-a-path", b"{wav}", None),
    Case("stdin-line-not-utf8", b'{"id": "x", "audio": "{wav}", "text": "caf\xe9"}',
         "stdin:2", "not UTF-8 text (byte 0xe9"),
    Case("stdin-path-not-utf8", b"{dir}/s\xff.wav", "stdin:3", "not UTF-8 text (byte 0xff"),
    Case("stdin-json-nested-100000-deep", b'{"audio": ' + b"[" * 100_000 + b"]" * 100_000
         + b"}", "stdin:4", "nested too deep"),
    Case("stdin-int-of-4301-digits", b'{"audio": "{wav}", "n": ' + b"7" * 4301 + b"}",
         "stdin:5", "Exceeds the limit (4300 digits)"),
    Case("stdin-malformed-json", b'{"id": "y", "audio": "{wav}', "stdin:6", "malformed JSON"),
    Case("stdin-record-without-audio", b'{"id": "no-audio", "text": "hi"}', "no-audio",
         "record has no 'audio' path"),
    Case("stdin-id-not-a-string", b'{"id": 7, "audio": "{wav}"}', "stdin:8",
         "'id' must be a string"),
]


@pytest.fixture(scope="module")
def units_runs(tmp_path_factory, speech_dir):
    d = tmp_path_factory.mktemp("units")
    km = d / "km.npy"  # k-means of 8 centroids over MFCC features (39 dims): no neural model
    np.save(km, np.random.default_rng(0).standard_normal((8, 39)).astype(np.float32))
    speech = (speech_dir / "s0.wav").read_bytes()
    encode = ["--encoder", "mfcc", "--kmeans", km]
    runs: dict[str, Outcome] = {}
    # audio files given as arguments, a good one before each bad one
    cases = units_files(speech)
    groups: dict[bool, list] = {True: [], False: []}
    for i, case in enumerate(cases):
        token = f"c{i:02d}-"
        good, path = d / f"{token}g0.wav", d / f"{token}{case.name}.wav"
        good.write_bytes(speech)
        if case.content == DIRECTORY:
            path.mkdir()
        elif case.content is not None:
            path.write_bytes(case.content)
        ids = [good.stem] + ([] if case.where else [path.stem])
        groups[case.where is not None].append((case, [good, path], Outcome(
            "sgpt-units", None, [], 0, token, case.where and str(path), case.says, ids,
            {p: p.read_bytes() for p in (good, path) if p.is_file()})))
    for failing, group in groups.items():
        proc = run("sgpt-units", *encode, *[p for _, paths, _ in group for p in paths])
        for case, _, o in group:
            o.proc, o.written = proc, jsonl_ids(proc.stdout)
            o.failing = len(group) if failing else 0
            runs[case.name] = o
    # lines on stdin: paths and records; a good record after each bad line
    wav = str(speech_dir / "s1.wav")
    lines = []
    for case in UNITS_STDIN:
        lines.append(case.content.replace(b"{wav}", wav.encode()).replace(
            b"{dir}", str(d).encode()))
        lines.append(json.dumps({"id": f"{case.name}-good", "audio": wav}).encode())
    stdin = BOM + b"\n".join(lines[::2]) + b"\n" + b"\n".join(lines[1::2]) + b"\n"
    proc = run("sgpt-units", *encode, input=stdin)
    for case in UNITS_STDIN:
        token = f"error: {case.where}: " if case.where else wav
        good = [f"{case.name}-good"] + ([] if case.where else ["s1"])
        runs[case.name] = Outcome("sgpt-units", proc, jsonl_ids(proc.stdout),
                                  len(UNITS_STDIN) - 1, token, case.where, case.says, good)
    # binary garbage on stdin
    noise = bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8))
    proc = run("sgpt-units", *encode, input=noise)
    runs["stdin-binary-garbage"] = Outcome("sgpt-units", proc, jsonl_ids(proc.stdout), 1,
                                           "stdin", "stdin", "neither an audio file", [])
    return runs


UNITS_CASES = names(UNITS_FILES) + names(UNITS_STDIN) + ["stdin-binary-garbage"]


@pytest.mark.parametrize("name", UNITS_CASES)
def test_sgpt_units(units_runs, name):
    check(units_runs[name])


# --- sgpt-vocode ----------------------------------------------------------------------------

SAFE_NAMES = {"id-dot-dot": "..", "id-escaping-upwards": "../../escape", "id-with-a-slash": "a/b",
              "id-of-a-hidden-file": ".hidden", "id-of-300-characters": "x" * 300}
VOCODE = COMMON + UNITS + [
    rec("unit-out-of-range", obj({"id": "@ID@", "units": [1, 100]}), "{id}",
        "unit 100 in 'units' is outside 0..99 (this vocoder has 100 units)"),
    rec("units-of-another-k", obj({"id": "@ID@", "units": [1], "units_meta": {"k": 1000}}),
        "{id}", "units are from k-means with k=1000"),
    rec("no-units", obj({"id": "@ID@", "text": "hi"}), "{id}", "no 'units' to vocode"),
    rec("empty-unit-line", b"<sosp><eosp>", "{stem}_2", "'units' is empty"),
    rec("durations-over-max-seconds", obj({"id": "@ID@", "units": [1, 2],
                                           "durations": [10_000_000, 10_000_000]}),
        "{id}", "400,000 s of audio asked for (20,000,000 frames): over --max-seconds 600"),
    rec("a-million-units", obj({"id": "@ID@", "units": [1, 2] * 500_000}), "{id}",
        "over --max-seconds 600"),
    *[Case(name, GOOD + b"\n" + json.dumps({"id": rid, "units": [3, 4]}).encode() + b"\n"
           + GOOD, None, written=(rid,)) for name, rid in SAFE_NAMES.items()],
]


@pytest.fixture(scope="module")
def vocode_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocode")
    vocoder = fabricate_vocoder(d / "vocoder", small_config(), seed=7)
    base = d / "outputs"

    def args(files, failing):
        out = base / ("fail" if failing else "ok") / "deep" / "wav"
        return ["--vocoder", vocoder, "-o", out, *files]

    runs = record_runs(d, "sgpt-vocode", VOCODE,
                       lambda rid: {"id": rid, "units": [1, 2, 3], "durations": [2, 2, 2]}, args)
    return runs, base


@pytest.mark.parametrize("case", VOCODE, ids=names(VOCODE))
def test_sgpt_vocode(vocode_runs, case):
    runs, base = vocode_runs
    o = runs[case.name]
    check(o)
    out = base / ("fail" if case.where else "ok") / "deep" / "wav"
    for record in map(json.loads, o.proc.stdout.splitlines()):
        if record["id"] in o.good:  # the file it got: inside -o DIR, not hidden, said
            audio = Path(record["audio"])
            assert audio.parent == out and audio.is_file() and not audio.name.startswith(".")
            assert len(audio.name.encode()) <= 200 and record["seconds"] > 0
    # nothing written outside -o DIR, whatever the ids
    assert {p.parent for p in base.rglob("*") if p.is_file()} <= {
        base / s / "deep" / "wav" for s in ("fail", "ok")}


VOCODER_CONFIGS = [  # (case, change to config.json or its whole text, what the line says)
    ("config-count-as-string", {"num_embeddings": "100"},
     "'num_embeddings' must be a positive integer"),
    ("config-kernel-size-float", {"dur_predictor_params": {
        "encoder_embed_dim": 16, "var_pred_hidden_dim": 16, "var_pred_kernel_size": 3.5,
        "var_pred_dropout": 0.5}}, "'dur_predictor_params.var_pred_kernel_size' must be a"),
    ("config-required-key-null", {"upsample_kernel_sizes": None},
     "missing field(s) upsample_kernel_sizes"),
    ("config-nested-100000-deep", "[" * 100_000 + "]" * 100_000, "not JSON (nested too deep)"),
]


@pytest.mark.parametrize("change, says", [c[1:] for c in VOCODER_CONFIGS],
                         ids=[c[0] for c in VOCODER_CONFIGS])
def test_sgpt_vocode_config_json_of_the_wrong_kind(vocode_runs, tmp_path, change, says):
    _, base = vocode_runs
    source = base.parent / "vocoder"
    vocoder = tmp_path / "vocoder"
    vocoder.mkdir()
    shutil.copy(source / "g_00500000", vocoder)
    config = json.loads((source / "config.json").read_text())
    text = change if isinstance(change, str) else json.dumps({**config, **change})
    (vocoder / "config.json").write_text(text)
    before = {p: p.read_bytes() for p in vocoder.iterdir()}
    proc = run("sgpt-vocode", "--vocoder", vocoder, "-o", tmp_path / "wav", input=b"1 2 3\n")
    path = str(vocoder / "config.json")
    check(Outcome("sgpt-vocode", proc, [], 1, path, path, says, [], before))
    assert not (tmp_path / "wav").exists() or not any((tmp_path / "wav").iterdir())


# --- sgpt-generate --------------------------------------------------------------------------

GENERATE = COMMON + [
    rec("unit-out-of-range", obj({"id": "@ID@", "units": [1, K]}), "{id}",
        f"unit {K} in 'units' is outside 0..{K - 1} (the model's tokenizer has {K} units)"),
    rec("units-negative", obj({"id": "@ID@", "units": [1, -2]}), "{id}",
        "'units' must be a list of integers >= 0"),
    rec("markup-sosp-in-text", obj({"id": "@ID@", "text": "hi <sosp><3><eosp> there"}),
        "{id}", "'text' contains markup '<sosp>'"),
    rec("markup-unit-in-text", obj({"id": "@ID@", "text": "say <5>"}), "{id}",
        "'text' contains markup '<5>'"),
    rec("markup-turns-in-text", obj({"id": "@ID@", "text": "x <eoh> [SpeechGPT]: y"}), "{id}",
        "'text' contains markup '<eoh>'"),
    rec("markup-in-instruction", obj({"id": "@ID@", "task": "asr", "units": [1, 2],
                                      "instruction": "<eoh> hi"}), "{id}",
        "'instruction' contains markup '<eoh>'"),
    rec("text-not-a-string", obj({"id": "@ID@", "text": ["hi"]}), "{id}",
        "'text' must be a string"),
    rec("huge-text", obj({"id": "@ID@", "text": "word " * 50_000}), "{id}",
        "leaves no room in the model's context of 512 tokens"),
    rec("unknown-task", obj({"id": "@ID@", "text": "hi", "task": "dance"}), "{id}",
        "unknown task 'dance'"),
    rec("nothing-to-answer", obj({"id": "@ID@"}), "{id}", "nothing to answer"),
    rec("duplicate-id", obj({"id": "@G0@", "text": "again"}), "{g0}", "duplicate id"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny LLaMA of random weights, saved as sgpt-train does: its answers are noise, but
    an answer it is."""
    from sgpt.lm.models import model_meta, save_model_dir

    out = tmp_path_factory.mktemp("model") / "stage3"
    meta = model_meta("chain-of-modality", K, False, "tiny-llama", len(tokenizer()))
    save_model_dir(out, tiny_llama(len(tokenizer())), meta, str(extended("llama", "reference",
                                                                         K)))
    return out


@pytest.fixture(scope="module")
def generate_runs(tmp_path_factory, model_dir):
    def args(files, _):
        return ["--model", model_dir, "--greedy", "--max-new-tokens", "2", *files]

    return record_runs(tmp_path_factory.mktemp("generate"), "sgpt-generate", GENERATE,
                       lambda rid: {"id": rid, "text": "What is the capital of France?"}, args)


@pytest.mark.parametrize("case", GENERATE, ids=names(GENERATE))
def test_sgpt_generate(generate_runs, case):
    check(generate_runs[case.name])


def test_sgpt_generate_duplicate_id_after_its_answer_was_written(model_dir):
    """Not taken for an answer 'resumed' from stdout and dropped without a word."""
    proc = subprocess.Popen([tool("sgpt-generate"), "--model", str(model_dir), "--greedy",
                             "--max-new-tokens", "2"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    try:
        proc.stdin.write(json.dumps({"id": "q", "text": "hi"}) + "\n")
        proc.stdin.flush()
        assert select.select([proc.stdout], [], [], 300)[0], "no answer while stdin is open"
        first = proc.stdout.readline()
        time.sleep(1)  # the answer is out: let the tool finish writing it
        proc.stdin.write(json.dumps({"id": "q", "text": "again"}) + "\n"
                         + json.dumps({"id": "r", "text": "hi"}) + "\n")
        proc.stdin.close()
        stdout, stderr = first + proc.stdout.read(), proc.stderr.read()
        proc.wait(timeout=300)
    finally:
        proc.kill()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    check(Outcome("sgpt-generate", done, jsonl_ids(stdout), 1, "error: q: ", "q",
                  "duplicate id", ["q", "r"]))


GENERATE_CONFIGS = [  # (case, file, its text, what the line says, exit status)
    ("yaml-setting-of-the-wrong-type", "generate.yaml", "greedy: true\nmax-new-tokens: lots\n",
     "setting 'max-new-tokens': 'lots'", 2),
    ("yaml-nested-100000-deep", "generate.yaml", "a: " + "[" * 100_000,
     "not YAML (nested too deep)", 2),
    ("adapter-rank-as-string", "adapter_config.json",
     json.dumps({"peft_type": "LORA", "r": "four", "target_modules": ["q_proj"]}),
     "'r' must be a positive integer, not 'four'", 1),
    ("adapter-modules-as-number", "adapter_config.json",
     json.dumps({"peft_type": "LORA", "r": 4, "target_modules": 5}),
     "'target_modules' must be a module name or a list of them, not 5", 1),
]


@pytest.mark.parametrize("name, text, says, status", [c[1:] for c in GENERATE_CONFIGS],
                         ids=[c[0] for c in GENERATE_CONFIGS])
def test_sgpt_generate_config_files_of_the_wrong_kind(model_dir, tmp_path, name, text, says,
                                                      status):
    config = tmp_path / "adapter" / name if name == "adapter_config.json" else tmp_path / name
    config.parent.mkdir(exist_ok=True)
    config.write_text(text)
    flag = ["--adapter", config.parent] if name == "adapter_config.json" else ["--config", config]
    question = json.dumps({"id": "q", "text": "hi"}) + "\n"
    proc = run("sgpt-generate", "--model", model_dir, *flag, input=question.encode())
    check(Outcome("sgpt-generate", proc, [], 1, str(config), str(config), says, [],
                  {config: config.read_bytes()}), status)


# --- sgpt-evaluate --------------------------------------------------------------------------

EVALUATE_ASR = COMMON + [
    rec("task-not-asr", obj({"id": "@ID@", "task": "tts", "text": "x", "reference": "x"}),
        "{id}", "an answer of task 'tts', not asr"),
    rec("no-reference", obj({"id": "@ID@", "task": "asr", "text": "x"}), "{id}",
        "no reference text"),
    rec("reference-only-punctuation", obj({"id": "@ID@", "task": "asr", "text": "x",
                                           "reference": "?!"}),
        "{id}", "reference '?!' is empty after normalization"),
    rec("text-not-a-string", obj({"id": "@ID@", "task": "asr", "text": 5, "reference": "x"}),
        "{id}", "'text' must be a string"),
    rec("duplicate-id", obj({"id": "@G0@", "task": "asr", "text": "a", "reference": "a"}),
        "{g0}", "duplicate id: scored once already"),
]
EVALUATE_JUDGE = [
    rec("audio-missing", obj({"id": "@ID@", "audio": "/nonexistent/x.wav", "text": "hi"}),
        "{id}", "no such file"),
    rec("audio-a-directory", obj({"id": "@ID@", "audio": "/", "text": "hi"}), "{id}",
        "no such file"),
    rec("audio-not-a-string", obj({"id": "@ID@", "audio": 5, "text": "hi"}), "{id}",
        "'audio' must be a string"),
    rec("no-audio", obj({"id": "@ID@", "text": "hi"}), "{id}", "needs 'audio' and 'text'"),
]
EVALUATE_PREPARE = [
    rec("test-set-audio-missing", obj({"id": "@ID@", "audio": "/nonexistent/x.wav",
                                       "text": "hi"}), "{id}", "/nonexistent/x.wav: no such file"),
    rec("test-set-audio-empty", obj({"id": "@ID@", "audio": "/dev/null", "text": "hi"}), "{id}",
        "/dev/null: empty file (0 bytes), not audio"),
    rec("test-set-no-text", obj({"id": "@ID@", "audio": "{wav}"}), "{id}",
        "needs a non-empty 'text'"),
    rec("test-set-no-audio", obj({"id": "@ID@", "text": "hi"}), "{id}", "no 'audio'"),
]
GOOD_SUMMARY = {"task": "asr", "wer": 0.25, "utterances": 2, "words": 4}
EVALUATE_REPORT = [  # summary files for sgpt-evaluate report: (name, content, where, says)
    Case("summary-nested-100000-deep", b"[" * 100_000 + b"]" * 100_000, "{file}",
         "not a JSON summary (nested too deep)"),
    Case("summary-field-of-the-wrong-type", obj({**GOOD_SUMMARY, "wer": "high"}), "{file}",
         "not a summary of sgpt-evaluate (Unknown format code"),
    Case("summary-field-missing", obj({"task": "asr", "wer": 0.1}), "{file}",
         "not a summary of sgpt-evaluate (no 'utterances' field)"),
    Case("summary-a-json-list", b"[1, 2]", "{file}", "not a summary of sgpt-evaluate"),
    Case("summary-empty-file", b"", "{file}", "not a JSON summary"),
    Case("summary-not-utf8", b'{"task": "\xff"}', "{file}", "not a JSON summary"),
    Case("summary-missing", None, None),  # a part not run: a warning
]


@pytest.fixture(scope="module")
def evaluate_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate")
    wav = d / "tone.wav"
    sf.write(wav, 0.3 * np.sin(np.arange(8000) / 5.0), 16000)
    runs = {}

    def asr(files, _):
        return ["asr", "--per-record", "-", "--summary", d / "asr.json", *files]

    runs.update(record_runs(d / "asr", "sgpt-evaluate", EVALUATE_ASR, lambda rid: {
        "id": rid, "task": "asr", "text": "hello world", "reference": "hello world"}, asr))
    judge = ["judge", "--judge", "cmd", "--judge-cmd", "test -s {wav} && echo hello world"]
    runs.update(record_runs(d / "judge", "sgpt-evaluate", EVALUATE_JUDGE, lambda rid: {
        "id": rid, "audio": str(wav), "text": "hello world"}, lambda files, _: [*judge, *files]))
    prepare = [Case(c.name, c.content.replace(b"{wav}", str(wav).encode()), c.where, c.says)
               for c in EVALUATE_PREPARE]
    runs.update(record_runs(d / "prepare", "sgpt-evaluate", prepare, lambda rid: {
        "id": rid, "audio": str(wav), "text": "hello world"},
        lambda files, _: ["prepare", "sentences", *files]))
    # report: a good summary before each bad one; the table's last column names its source
    report = d / "report"
    report.mkdir()
    paths, outcomes = [], []
    for i, case in enumerate(EVALUATE_REPORT):
        token = f"r{i:02d}-"
        good, bad = report / f"{token}good.json", report / f"{token}{case.name}.json"
        good.write_text(json.dumps(GOOD_SUMMARY))
        if case.content is not None:
            bad.write_bytes(case.content)
        paths += [good, bad]
        outcomes.append(Outcome("sgpt-evaluate", None, [], len(EVALUATE_REPORT) - 1, token,
                                case.where and str(bad), case.says, [good.name],
                                {p: p.read_bytes() for p in (good, bad) if p.is_file()}))
    proc = run("sgpt-evaluate", "report", *paths)
    sources = [line.split("|")[-2].strip() for line in proc.stdout.splitlines()[2:]]
    for case, o in zip(EVALUATE_REPORT, outcomes):
        o.proc, o.written = proc, sources
        runs[case.name] = o
    return runs


EVALUATE = EVALUATE_ASR + EVALUATE_JUDGE + EVALUATE_PREPARE + EVALUATE_REPORT


@pytest.mark.parametrize("case", EVALUATE, ids=[
    ("asr-" if c in EVALUATE_ASR else "") + c.name for c in EVALUATE])
def test_sgpt_evaluate(evaluate_runs, case):
    check(evaluate_runs[case.name])


# --- sgpt-train: its input checks, before anything is loaded or written ---------------------

TRAIN = [  # (case, the --config file's text or None, --data, what the line says, exit status)
    ("yaml-number-as-word", "lr: fast\n", None, "setting 'lr': 'fast' is not a number", 2),
    ("yaml-list-as-number", "data: 5\n", None, "setting 'data': 5 is not a list", 2),
    ("yaml-list-of-the-wrong-items", "adam_betas: [0.9, fast]\n", None,
     "setting 'adam_betas': 'fast' is not a number", 2),
    ("yaml-int-as-float", "batch_size: 2.5\n", None,
     "setting 'batch_size': 2.5 is not an integer", 2),
    ("yaml-nested-100000-deep", "a: " + "[" * 100_000, None, "not YAML (nested too deep)", 2),
    ("yaml-int-of-5000-digits", "seed: 1" + "0" * 5000 + "\n", None,
     "not YAML (Exceeds the limit (4300 digits)", 2),
    ("yaml-not-a-mapping", "- lr\n- 1e-3\n", None, "a YAML mapping of settings is expected", 2),
    ("yaml-not-utf8", b"lr: \xff\n", None, "not UTF-8 text", 2),
    ("data-missing", None, "nope", "no such directory of packed shards", 1),
    ("data-a-file", None, "file.jsonl", "a file, not a directory of packed shards", 1),
]


@pytest.mark.parametrize("text, data, says, status", [c[1:] for c in TRAIN],
                         ids=[c[0] for c in TRAIN])
def test_sgpt_train_input_checks(tmp_path, text, data, says, status):
    config, where = tmp_path / "train.yaml", None
    args = ["--stage", "pretrain", "--model", tmp_path / "base", "-o", tmp_path / "out"]
    if text is not None:
        config.write_bytes(text if isinstance(text, bytes) else text.encode())
        args += ["--config", config]
        where = str(config)
    if data is not None:
        where = str(tmp_path / data)
        if data.endswith(".jsonl"):
            (tmp_path / data).write_text('{"id": "a", "units": [1]}\n')
    args += ["--data", where if data is not None else tmp_path / "packed"]
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    proc = run("sgpt-train", *args)
    check(Outcome("sgpt-train", proc, [], 1, where, where, says, [], before), status)
    assert sorted(tmp_path.iterdir()) == sorted(before)  # no output directory made
