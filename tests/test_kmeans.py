"""k-means: reading scikit-learn's files, predicting as it does, learning as well as it does."""

from __future__ import annotations

import json
import os
import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

import sgpt.units.kmeans
from sgpt.core.errors import CheckpointError
from sgpt.units.kmeans import (
    FrameReservoir,
    KMeansQuantizer,
    PositionMeans,
    center_positions,
    learn_kmeans,
    lloyd_step,
    load_centroids,
    load_position_means,
    save_centroids,
)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """3000 points in 12 dims around 15 well-separated centres: (points, blob of each)."""
    x, y = make_blobs(3000, n_features=12, centers=15, cluster_std=1.0, center_box=(-30, 30),
                      random_state=3)
    return x.astype(np.float32), y


def test_npy_round_trip_and_sidecar(tmp_path):
    centroids = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    path = tmp_path / "km7.npy"
    save_centroids(path, torch.from_numpy(centroids), {"encoder": "mfcc", "layer": None,
                                                       "inertia": 1.5})
    np.testing.assert_array_equal(load_centroids(path), centroids)
    assert load_centroids(str(path)).dtype == np.float32
    meta = json.loads((tmp_path / "km7.json").read_text())
    assert meta == {"format": "sgpt-kmeans", "version": 2, "k": 7, "dim": 5, "encoder": "mfcc",
                    "layer": None, "inertia": 1.5}
    assert sorted(os.listdir(tmp_path)) == ["km7.json", "km7.npy"]  # no temporary files left


def test_sklearn_joblib_bin_gives_its_centroids_and_predictions(tmp_path, blobs):
    x = blobs[0]
    km = MiniBatchKMeans(n_clusters=20, batch_size=256, n_init=3, random_state=0).fit(x)
    path = tmp_path / "feats_km20.bin"
    joblib.dump(km, path)
    centroids = load_centroids(path)
    np.testing.assert_array_equal(centroids, km.cluster_centers_.astype(np.float32))
    units = KMeansQuantizer(torch.from_numpy(centroids))(torch.from_numpy(x))
    assert units.dtype == torch.long
    np.testing.assert_array_equal(units.numpy(), km.predict(x))


def test_quantizer_matches_brute_force_in_chunks_and_float32(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    centroids, feats = torch.randn(50, 8, generator=gen), torch.randn(1000, 8, generator=gen)
    brute = torch.cdist(feats.double(), centroids.double()).argmin(1)
    quantizer = KMeansQuantizer(centroids)
    assert (quantizer.k, quantizer.dim) == (50, 8)
    assert torch.equal(quantizer(feats), brute)
    monkeypatch.setattr(sgpt.units.kmeans, "CHUNK_ELEMENTS", 50 * 128)  # 128 rows at a time
    assert torch.equal(quantizer(feats), brute)
    half = feats.bfloat16()  # quantized in float32
    expected = torch.cdist(half.double(), centroids.double()).argmin(1)
    assert torch.equal(quantizer(half), expected)
    assert quantizer(torch.empty(0, 8)).shape == (0,)


def test_check_dim_names_both_dims():
    quantizer = KMeansQuantizer(np.zeros((5, 7), dtype=np.float32))
    quantizer.check_dim(7, "x")
    with pytest.raises(CheckpointError, match="the mfcc encoder's features: features have dim "
                                              "39 but the k-means centroids have dim 7"):
        quantizer.check_dim(39, "the mfcc encoder's features")


def units_to_blobs(units: np.ndarray, blobs: np.ndarray) -> list[int]:
    """The blob each unit 0, 1, ... stands for."""
    return [int(np.bincount(blobs[units == u]).argmax()) for u in range(units.max() + 1)]


@pytest.mark.parametrize("batch_size", [None, 256])
def test_learn_kmeans_recovers_blobs_as_well_as_sklearn(blobs, batch_size):
    x, y = blobs
    centroids, inertia = learn_kmeans(torch.from_numpy(x), 15, seed=0, batch_size=batch_size)
    assert centroids.dtype == torch.float32 and centroids.shape == (15, 12)
    units = KMeansQuantizer(centroids)(torch.from_numpy(x)).numpy()
    assert adjusted_rand_score(y, units) == 1.0  # every blob found, whole
    means = np.stack([x[y == b].mean(0) for b in units_to_blobs(units, y)])
    np.testing.assert_allclose(centroids.numpy(), means, atol=0.02 if batch_size else 1e-4)
    reference = KMeans(n_clusters=15, n_init=1, random_state=0).fit(x).inertia_
    assert abs(inertia - reference) / reference < 0.02
    assert inertia == pytest.approx(float(((x - centroids.numpy()[units]) ** 2).sum()), rel=1e-4)


def test_learn_kmeans_is_deterministic_for_a_seed(blobs):
    x = torch.from_numpy(blobs[0])
    for batch_size in (None, 100):
        a = learn_kmeans(x, 15, seed=7, max_iter=5, batch_size=batch_size)
        b = learn_kmeans(x, 15, seed=7, max_iter=5, batch_size=batch_size)
        c = learn_kmeans(x, 15, seed=8, max_iter=5, batch_size=batch_size)
        assert torch.equal(a[0], b[0]) and a[1] == b[1]
        assert not torch.equal(a[0], c[0])


def test_learn_kmeans_progress_and_early_stop(blobs):
    calls = []
    learn_kmeans(torch.from_numpy(blobs[0]), 15, seed=0, max_iter=100,
                 progress=lambda i, inertia: calls.append((i, inertia)))
    assert [i for i, _ in calls] == list(range(1, len(calls) + 1)) and len(calls) < 100
    assert all(b <= a * (1 + 1e-6) for (_, a), (_, b) in zip(calls, calls[1:]))


def test_empty_cluster_is_reseeded_on_the_farthest_point():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0], [13.0, 0.0]])
    centroids = torch.tensor([[0.0, 0.0], [10.0, 0.0], [100.0, 100.0]])  # the last gets none
    new, _ = lloyd_step(x, centroids)
    assert torch.isfinite(new).all()
    torch.testing.assert_close(new[0], torch.tensor([0.05, 0.0]))
    torch.testing.assert_close(new[2], torch.tensor([13.0, 0.0]))  # 2.9 from its centroid


def test_learn_kmeans_with_fewer_distinct_points_than_k_and_too_few_points():
    x = torch.tensor([[0.0], [1.0], [2.0]]).repeat(10, 1)
    for batch_size in (None, 4):
        centroids, inertia = learn_kmeans(x, 5, seed=0, batch_size=batch_size)
        assert torch.isfinite(centroids).all() and inertia == pytest.approx(0.0, abs=1e-6)
        assert sorted(set(centroids[:, 0].tolist())) == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="k=5 needs at least 5 points, got 3"):
        learn_kmeans(x[:3], 5, seed=0)


def test_reservoir_keeps_everything_below_its_bound():
    reservoir = FrameReservoir(100, seed=0)
    assert reservoir.frames().shape[0] == 0
    for n in (10, 30, 60):
        reservoir.add(torch.arange(n, dtype=torch.float32)[:, None].expand(n, 3))
    assert reservoir.seen == 100 and torch.equal(
        reservoir.frames()[:, 0], torch.cat([torch.arange(n) for n in (10, 30, 60)]).float())


def test_reservoir_is_bounded_uniform_and_deterministic():
    def sample(seed: int) -> FrameReservoir:
        reservoir = FrameReservoir(2000, seed)
        start = 0
        for n in [700, 1, 2500, 64] * 5 + [40000]:  # one large add: many shared slots
            reservoir.add(torch.arange(start, start + n, dtype=torch.float32)[:, None])
            start += n
        return reservoir

    reservoir = sample(0)
    kept = reservoir.frames()[:, 0].long()
    total = reservoir.seen
    assert total == 5 * 3265 + 40000 and kept.shape == (2000,)
    assert len(kept.unique()) == 2000 and kept.max() < total
    counts = torch.bincount(kept * 10 // total, minlength=10)  # ten equal stretches of input
    assert counts.min() > 140 and counts.max() < 260  # 200 expected in each
    assert torch.equal(sample(0).frames(), reservoir.frames())
    assert not torch.equal(sample(1).frames(), reservoir.frames())


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_bad_files_raise_one_line_checkpoint_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = {"missing.npy": None, "text.bin": b"hello, not k-means\n",
             "random.bin": np.random.default_rng(0).bytes(300)}
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    np.save(tmp_path / "flat.npy", np.zeros(10, dtype=np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), dtype=np.float32))
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]], dtype=np.float32))
    np.save(tmp_path / "strings.npy", np.array([["a", "b"]]))
    np.save(tmp_path / "objects.npy", np.array([[{}, 1]], dtype=object), allow_pickle=True)
    joblib.dump({"not": "kmeans"}, tmp_path / "dict.bin")
    (tmp_path / "exploit.bin").write_bytes(pickle.dumps(_Exploit()))
    expected = {"missing.npy": "no such k-means file", "flat.npy": "[k, dim]",
                "empty.npy": "[k, dim]", "nan.npy": "NaN", "strings.npy": "numeric",
                "objects.npy": "npy", "dict.bin": "cluster_centers_", "text.bin": "",
                "random.bin": "", "exploit.bin": ""}
    for name, needle in expected.items():
        with pytest.raises(CheckpointError) as e:
            load_centroids(tmp_path / name)
        message = str(e.value)
        assert "\n" not in message and name in message and needle in message
    with pytest.raises(CheckpointError):
        load_centroids(tmp_path)  # a directory
    assert not (tmp_path / "pwned").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_learns_and_quantizes_like_the_cpu(blobs):
    x = torch.from_numpy(blobs[0])
    for batch_size in (None, 256):
        gpu = learn_kmeans(x.cuda(), 15, seed=0, batch_size=batch_size)
        assert gpu[0].is_cuda and torch.equal(gpu[0], learn_kmeans(x.cuda(), 15, seed=0,
                                                                   batch_size=batch_size)[0])
        cpu = learn_kmeans(x, 15, seed=0, batch_size=batch_size)
        assert gpu[1] == pytest.approx(cpu[1], rel=1e-3)
    quantizer = KMeansQuantizer(cpu[0])
    units = quantizer.cuda()(x.cuda().bfloat16())
    assert units.is_cuda and torch.equal(units.cpu(), quantizer.cpu()(x.bfloat16()))


# --- centring on the position's mean ----------------------------------------------------------

def test_position_means_are_each_positions_mean_shrunk_toward_the_corpus_mean():
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]])  # positions 0 1 2 0
    b = torch.tensor([[5.0, 2.0]])
    means = PositionMeans(period=3, dim=2)
    means.add(a)
    means.add(b)
    overall = torch.tensor([15.0, 2.0], dtype=torch.float64) / 5
    s = sgpt.units.kmeans.POSITION_SHRINK
    sums = torch.tensor([[10.0, 2.0], [2.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    counts = torch.tensor([3.0, 1.0, 1.0], dtype=torch.float64)
    want = (sums + s * overall) / (counts[:, None] + s)
    torch.testing.assert_close(means.means(), want.float(), rtol=0, atol=0)
    never = PositionMeans(period=8, dim=2)
    never.add(a)
    torch.testing.assert_close(never.means()[5], torch.tensor([2.5, 0.0]))  # never seen: mean
    with pytest.raises(ValueError):
        PositionMeans(2, 2).means()


def test_quantizer_centres_each_frame_on_its_positions_mean_wrapping_at_the_period():
    centroids = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    means = torch.tensor([[10.0, 0.0], [0.0, 10.0]])  # period 2
    feats = torch.tensor([[10.0, 0.0], [0.0, 10.0], [20.0, 0.0], [0.0, 20.0], [10.0, 10.0]])
    # centred: [0,0] [0,0] [10,0] [0,10] [0,10] (the fifth frame is at position 0 again)
    assert KMeansQuantizer(centroids, means)(feats).tolist() == [0, 0, 1, 2, 2]
    assert KMeansQuantizer(centroids)(feats).tolist() == [1, 2, 1, 2, 1]
    torch.testing.assert_close(center_positions(feats, means)[4], torch.tensor([0.0, 10.0]))
    with pytest.raises(CheckpointError, match="do not fit"):
        KMeansQuantizer(centroids, torch.zeros(2, 3))


def test_position_means_are_saved_beside_the_centroids_and_loaded_with_them(tmp_path):
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(6, 4)).astype(np.float32)
    means = rng.normal(size=(5, 4)).astype(np.float32)
    km = tmp_path / "km.npy"
    save_centroids(km, centroids, {"encoder": "whisper"}, means)
    assert sorted(os.listdir(tmp_path)) == ["km.json", "km.npy", "km.positions.npy"]
    meta = json.loads((tmp_path / "km.json").read_text())
    assert (meta["version"], meta["center"], meta["position_period"]) == (2, "positions", 5)
    np.testing.assert_array_equal(load_position_means(km), means)
    feats = torch.from_numpy(rng.normal(size=(12, 4)).astype(np.float32))
    want = KMeansQuantizer(centroids, means)(feats)
    assert torch.equal(KMeansQuantizer.from_file(km)(feats), want)
    plain = tmp_path / "plain.npy"
    save_centroids(plain, centroids, {"encoder": "mfcc"})
    assert load_position_means(plain) is None
    assert KMeansQuantizer.from_file(plain).position_means is None

    np.save(tmp_path / "km.positions.npy", means[:4])  # not the period the sidecar names
    with pytest.raises(CheckpointError, match=r"km\.positions\.npy: not the \[5, dim\]"):
        KMeansQuantizer.from_file(km)
    os.remove(tmp_path / "km.positions.npy")
    with pytest.raises(CheckpointError, match=r"km\.positions\.npy: the position means"):
        KMeansQuantizer.from_file(km)


def test_reservoir_with_a_period_centres_its_sample_on_each_frames_position():
    rng = np.random.default_rng(1)
    utterances = [torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32)) for n in (7, 4)]
    means = torch.from_numpy(rng.normal(size=(5, 3)).astype(np.float32))
    reservoir = FrameReservoir(100, seed=0, period=5)
    for u in utterances:
        reservoir.add(u)
    assert torch.equal(reservoir.frames(), torch.cat(utterances))  # all kept, in order
    want = torch.cat([center_positions(u, means) for u in utterances])
    assert torch.equal(reservoir.centered(means), want)
