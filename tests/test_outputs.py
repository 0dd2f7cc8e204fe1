"""-o checked before any work in every tool: never an input, never the wrong kind of path,
one usage line naming it (exit status 2), and the inputs untouched."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from conftest import run_tool


@pytest.fixture(scope="module")
def files(tmp_path_factory, speech_dir):
    d = tmp_path_factory.mktemp("outputs")
    records = d / "v.jsonl"
    records.write_text(json.dumps({"id": "a", "units": [1, 2], "text": "hi"}) + "\n")
    km = d / "km.npy"
    np.save(km, np.random.default_rng(0).standard_normal((8, 39)).astype(np.float32))
    (d / "plain").write_text("a file\n")
    (d / "dir").mkdir()
    return {"records": records, "km": km, "wav": speech_dir / "s0.wav", "file": d / "plain",
            "dir": d / "dir"}


CASES = [
    # (tool and arguments, what the one error line says)
    (["sgpt-tokenize", "pretrain", "-k", "100", "-o", "{records}", "{records}"],
     "{records} is also an input"),
    (["sgpt-tokenize", "cross-modal", "-k", "100", "-o", "{dir}", "{records}"],
     "{dir} is a directory"),
    (["sgpt-units", "--encoder", "mfcc", "--kmeans", "{km}", "-o", "{wav}", "{wav}"],
     "{wav} is also an input"),
    (["sgpt-units", "--encoder", "mfcc", "--kmeans", "{km}", "-o", "{file}/u.jsonl", "{wav}"],
     "{file}/u.jsonl: {file} is not a directory"),
    (["sgpt-units", "learn-kmeans", "--encoder", "mfcc", "-k", "2", "-o", "{dir}", "{wav}"],
     "{dir} is a directory"),
    (["sgpt-vocode", "--vocoder", "{dir}", "-o", "{file}", "{records}"], "{file} is a file"),
    (["sgpt-evaluate", "asr", "--summary", "{records}", "{records}"],
     "{records} is also an input"),
    (["sgpt-generate", "--model", "{dir}", "-o", "{records}", "{records}"],
     "{records} is also an input"),
]


@pytest.mark.parametrize("args, says", CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_a_bad_output_is_one_usage_line_before_any_work(files, args, says):
    before = {k: p.read_bytes() for k, p in files.items() if p.is_file()}
    r = run_tool(args[0], *[a.format(**files) for a in args[1:]])
    assert r.returncode == 2, r.stderr
    assert says.format(**files) in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert {k: p.read_bytes() for k, p in files.items() if p.is_file()} == before
    assert sorted(p.name for p in files["dir"].iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_outputs_get_the_umasks_permissions_not_private_ones(tmp_path, umask):
    """Files and directories written under a temporary name and renamed into place have the
    modes open() and mkdir give (a cluster's group reads a model), not mkstemp's 0600."""
    from sgpt.core.files import make_temp_dir, write_atomic, write_json

    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "a.bin", lambda f: f.write(b"x"))
        write_json(tmp_path / "a.json", {"a": 1})
        made = make_temp_dir(tmp_path, ".out.")
        with open(tmp_path / "plain", "w") as f:
            f.write("x")
        os.mkdir(tmp_path / "plain-dir")
    finally:
        os.umask(old)
    mode = stat.S_IMODE
    want_file, want_dir = mode(os.stat(tmp_path / "plain").st_mode), mode(
        os.stat(tmp_path / "plain-dir").st_mode)
    assert want_file == 0o666 & ~umask and want_dir == 0o777 & ~umask
    assert mode(os.stat(tmp_path / "a.bin").st_mode) == want_file
    assert mode(os.stat(tmp_path / "a.json").st_mode) == want_file
    assert mode(os.stat(made).st_mode) == want_dir and made.name.startswith(".out.")
