"""The restricted unpickler: real joblib / torch files load, code in them never runs."""

from __future__ import annotations

import argparse
import collections
import gzip
import os

import numpy as np
import pytest
import torch

from sgpt.core.errors import CheckpointError
from sgpt.core.safe_pickle import Stub, load_joblib, torch_load

joblib = pytest.importorskip("joblib")


class Evil:
    """Running this pickle would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_centroids_identical(tmp_path, dtype):
    cluster = pytest.importorskip("sklearn.cluster")
    data = np.random.default_rng(0).normal(size=(600, 16)).astype(dtype)
    km = cluster.MiniBatchKMeans(n_clusters=50, n_init=1, random_state=0).fit(data)
    joblib.dump(km, tmp_path / "km.bin")
    loaded = load_joblib(tmp_path / "km.bin")
    assert isinstance(loaded, Stub)
    assert type(loaded).__qualname__ == "MiniBatchKMeans"
    assert loaded.cluster_centers_.dtype == km.cluster_centers_.dtype
    assert np.array_equal(loaded.cluster_centers_, km.cluster_centers_)
    assert loaded.n_clusters == 50


def test_joblib_array_layouts(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "fortran": np.asfortranarray(rng.normal(size=(7, 5))),
        "big_endian": rng.normal(size=(3, 4)).astype(">f4"),
        "ints": np.arange(24, dtype=np.int16).reshape(2, 3, 4),
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 3), np.float32),
        "objects": np.array(["a", 1], dtype=object),
    }
    joblib.dump({**arrays, "nested": [arrays["ints"], {"x": np.float64(2.0)}]},
                tmp_path / "a.bin")
    loaded = load_joblib(tmp_path / "a.bin")
    for name, array in arrays.items():
        assert loaded[name].shape == array.shape, name
        assert np.array_equal(loaded[name], array), name
    assert loaded["big_endian"].dtype.isnative
    assert np.array_equal(loaded["nested"][0], arrays["ints"])
    assert loaded["nested"][1]["x"] == 2.0


def test_code_in_pickles_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    joblib.dump({"x": Evil(marker)}, tmp_path / "evil.bin")
    torch.save({"x": Evil(marker)}, tmp_path / "evil.pt")
    from_joblib = load_joblib(tmp_path / "evil.bin")["x"]
    from_torch = torch_load(tmp_path / "evil.pt")["x"]
    assert not marker.exists()
    for stub in (from_joblib, from_torch):
        assert isinstance(stub, Stub)
        assert stub._args == (f"touch {marker}",)


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_torch_checkpoint_with_objects(tmp_path, zipfile):
    state = {
        "args": argparse.Namespace(encoder_layers=3, normalize=True),
        "model": collections.OrderedDict(w=torch.randn(4, 3), b=torch.arange(3)),
        "extra": {"dtype": torch.bfloat16, "size": torch.Size([2, 3]), "blob": b"\x00\xff",
                  "np": np.arange(4.0), "set": {1, 2}},
    }
    torch.save(state, tmp_path / "c.pt", _use_new_zipfile_serialization=zipfile)
    loaded = torch_load(tmp_path / "c.pt")
    assert loaded["args"].encoder_layers == 3 and loaded["args"].normalize is True
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert loaded["extra"]["dtype"] is torch.bfloat16
    assert loaded["extra"]["size"] == torch.Size([2, 3])
    assert loaded["extra"]["blob"] == b"\x00\xff"
    assert np.array_equal(loaded["extra"]["np"], np.arange(4.0))
    assert loaded["extra"]["set"] == {1, 2}


def test_bad_files(tmp_path):
    joblib.dump({"a": np.arange(1000.0)}, tmp_path / "good.bin")
    good = (tmp_path / "good.bin").read_bytes()
    (tmp_path / "truncated.bin").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage").write_bytes(os.urandom(1000))
    (tmp_path / "text").write_text("hello\n")
    joblib.dump({"a": np.arange(10.0)}, tmp_path / "zlib.bin", compress=3)
    (tmp_path / "gzip.bin").write_bytes(gzip.compress(good))
    torch.save({"w": torch.randn(100)}, tmp_path / "good.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:300])

    cases = {
        "truncated.bin": (load_joblib, "not a readable joblib file"),
        "garbage": (load_joblib, "not a joblib file"),
        "text": (load_joblib, "not a joblib file"),
        "zlib.bin": (load_joblib, "zlib-compressed"),
        "gzip.bin": (load_joblib, "gzip-compressed"),
        "missing.bin": (load_joblib, "no such file"),
        "truncated.pt": (torch_load, "not a readable torch checkpoint"),
        "garbage.pt": (torch_load, "not a readable torch checkpoint"),
        "text.pt": (torch_load, "not a readable torch checkpoint (neither the zip archive "
                                "torch.save writes nor a pickle)"),  # not torch's bare '104'
        "data.jsonl": (torch_load, "not a readable torch checkpoint (neither"),
        "missing.pt": (torch_load, "no such file"),
    }
    (tmp_path / "garbage.pt").write_bytes(os.urandom(1000))
    (tmp_path / "text.pt").write_text("hello\n")
    (tmp_path / "data.jsonl").write_text('{"id": "a"}\n')
    for name, (load, reason) in cases.items():
        with pytest.raises(CheckpointError) as e:
            load(tmp_path / name)
        message = str(e.value)
        assert reason in message and name in message and "\n" not in message, message
    with pytest.raises(CheckpointError, match="is a directory"):
        torch_load(tmp_path)


def test_state_of_allowed_functions_is_not_set(tmp_path):
    # PROTO 2; GLOBAL torch._utils._rebuild_tensor_v2; {"__defaults__": 1}; BUILD; STOP
    (tmp_path / "p.bin").write_bytes(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"
                                     b"}X\x0c\x00\x00\x00__defaults__K\x01sb.")
    with pytest.raises(CheckpointError, match="sets the state of a function"):
        load_joblib(tmp_path / "p.bin")
    assert torch._utils._rebuild_tensor_v2.__defaults__ == (None,)
