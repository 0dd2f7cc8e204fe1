"""K-means: reading centroids, quantizing features to units, and learning centroids.

Centroids are ``.npy`` float32 [k, dim] (what ``learn_kmeans`` writes, with a JSON sidecar
that opens with its format and version, ``KMEANS_FORMAT``; a sidecar without them is of an
sgpt before versions, version 1) or the published fairseq/SpeechGPT ``*_km1000.bin``: a
joblib-pickled scikit-learn MiniBatchKMeans, read without executing code
(``sgpt.core.safe_pickle``) for its ``cluster_centers_``.

Learning is k-means++ (greedy, as scikit-learn) then Lloyd iterations, full-batch or
mini-batch, in torch on the features' device. Corpora larger than memory are sampled first,
uniformly, with ``FrameReservoir``.

Position centering (sidecar ``"center": "positions"``, version 2). An encoder with absolute
position embeddings (Whisper's encoder: sinusoids added to its input, kept to its output for
the decoder's timestamps) writes the frame's place in its window into every feature: on
espeak-ng speech, k-means units of raw Whisper-base features share 2.5 bits with the frame's
place in the utterance (the first half second is mostly a few units, the next another few),
so units of two different sentences look alike. Subtracting the corpus's mean feature at each
position of the window (``PositionMeans``) before the nearest centroid leaves 0.4 bits
(``bench/unit_stability.py``; mfcc units: 0.2). The means,
[period, dim] float32, are written beside the centroids as ``<name>.positions.npy``; frame
``t`` of an utterance is at position ``t % period`` (a window of ``period`` frames is what the
encoder sees at once: long audio is encoded window by window).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sgpt.core.errors import CheckpointError
from sgpt.core.files import write_atomic, write_json
from sgpt.core.formats import FileFormat

CHUNK_ELEMENTS = 1 << 24  # bound on the [rows, k] matrices built at once (64 MiB of float32)
NPY_MAGIC = b"\x93NUMPY"
KMEANS_FORMAT = FileFormat("sgpt-kmeans", "a k-means sidecar",
                           "learn it again with sgpt-units learn-kmeans", version=2,
                           unnamed=True)  # 2: "center": "positions"
POSITION_SHRINK = 20.0  # frames of the corpus mean a position's mean starts from


def read_sidecar(path: str | os.PathLike) -> dict | None:
    """The JSON sidecar of a ``.npy`` k-means, its format version checked; None when there is
    none, or it is not JSON (then nothing is known of the centroids)."""
    sidecar = Path(path).with_suffix(".json")
    if Path(path).suffix != ".npy" or not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    KMEANS_FORMAT.check(sidecar, meta)
    return meta


def check_learnt_on(path: str | os.PathLike, encoder: str, layer: int | None) -> None:
    """CheckpointError when the sidecar of a ``.npy`` k-means says its centroids were learnt
    on the features of another encoder or layer than ``encoder`` (a dense model's name) and
    ``layer``: features of the same width from another model mean nothing to them. A
    sidecar of sgpt 0.1 (no ``sgpt_version``) that says ``whisper`` means the 30 s-padded
    features, today's ``whisper-padded``. Without a sidecar (the published .bin) nothing is
    known, and nothing is checked."""
    meta = read_sidecar(path)
    if meta is None or "encoder" not in meta:
        return
    sidecar = Path(path).with_suffix(".json")
    learnt = str(meta["encoder"]).split(":")[0]
    if learnt == "whisper" and "sgpt_version" not in meta:
        learnt = "whisper-padded"
    if learnt != encoder:
        raise CheckpointError(f"{path}: learnt on {learnt} features, not {encoder}'s (its "
                              f"{sidecar.name} says so): use --encoder {learnt} with it, or "
                              "learn-kmeans again")
    if meta.get("layer") is not None and layer is not None and meta["layer"] != layer:
        raise CheckpointError(f"{path}: learnt on layer {meta['layer']}, not layer {layer} "
                              f"(its {sidecar.name} says so)")


def load_centroids(path: str | os.PathLike) -> np.ndarray:
    """Centroids float32 [k, dim] from a ``.npy`` file or a joblib-pickled sklearn k-means."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such k-means file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a k-means file")
    with open(path, "rb") as f:
        is_npy = f.read(len(NPY_MAGIC)) == NPY_MAGIC or Path(path).suffix == ".npy"
    if is_npy:
        read_sidecar(path)  # refuses centroids of a version this sgpt does not read
        try:
            centroids = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{path}: unreadable .npy file ({e})") from None
    else:
        from sgpt.core.safe_pickle import load_joblib

        model = load_joblib(path)  # raises CheckpointError for anything else
        centroids = getattr(model, "cluster_centers_", None)
        if centroids is None:
            raise CheckpointError(f"{path}: not a k-means model (it has no cluster_centers_)")
    if not isinstance(centroids, np.ndarray) or centroids.dtype.kind not in "fiu":
        raise CheckpointError(f"{path}: k-means centroids are not a numeric array")
    if centroids.ndim != 2 or 0 in centroids.shape:
        raise CheckpointError(f"{path}: k-means centroids must be [k, dim], not "
                              f"{list(centroids.shape)}")
    if not np.isfinite(centroids).all():
        raise CheckpointError(f"{path}: k-means centroids hold NaN or Inf")
    return np.ascontiguousarray(centroids, dtype=np.float32)


def positions_path(path: str | os.PathLike) -> Path:
    """Where the position means of the k-means ``path`` lie: ``km.npy`` -> ``km.positions.npy``."""
    return Path(path).with_suffix(".positions.npy")


def save_centroids(path: str | os.PathLike, centroids: Tensor | np.ndarray, meta: dict,
                   position_means: np.ndarray | None = None) -> None:
    """Write centroids as ``.npy`` float32 and ``meta`` beside them as ``.json`` (the sidecar,
    stamped with ``KMEANS_FORMAT``), atomically; with ``position_means`` [period, dim] also
    ``<name>.positions.npy``, and the sidecar says so."""
    if isinstance(centroids, Tensor):
        centroids = centroids.detach().cpu().numpy()
    array = np.ascontiguousarray(centroids, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"centroids must be [k, dim], not {list(array.shape)}")
    sidecar = Path(path).with_suffix(".json")
    if sidecar == Path(path):
        raise ValueError(f"{path}: the centroids file cannot be named .json (that is its sidecar)")
    info = {**KMEANS_FORMAT.stamp(), "k": array.shape[0], "dim": array.shape[1], **meta}
    if position_means is not None:
        means = np.ascontiguousarray(position_means, dtype=np.float32)
        if means.ndim != 2 or means.shape[1] != array.shape[1]:
            raise ValueError(f"position means must be [period, {array.shape[1]}], not "
                             f"{list(means.shape)}")
        info.update(center="positions", position_period=means.shape[0])
        write_atomic(positions_path(path), lambda f: np.save(f, means))
    write_atomic(path, lambda f: np.save(f, array))
    write_json(sidecar, info)


def load_position_means(path: str | os.PathLike) -> np.ndarray | None:
    """The position means [period, dim] of the ``.npy`` k-means ``path`` when its sidecar says
    its features are centred by position, else None (CheckpointError if the file is missing
    or does not fit)."""
    meta = read_sidecar(path)
    if meta is None or meta.get("center") is None:
        return None
    where = positions_path(path)
    if meta["center"] != "positions":
        raise CheckpointError(f"{Path(path).with_suffix('.json')}: unknown centering "
                              f"{meta['center']!r} (this sgpt knows positions)")
    try:
        means = np.load(where, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{where}: the position means its k-means needs are unreadable "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None
    if (means.ndim != 2 or means.dtype.kind != "f" or len(means) != meta.get("position_period")
            or not np.isfinite(means).all()):
        raise CheckpointError(f"{where}: not the [{meta.get('position_period')}, dim] finite "
                              "position means its k-means sidecar names")
    return np.ascontiguousarray(means, dtype=np.float32)


class PositionMeans:
    """The mean feature at each position ``t % period`` of a corpus's utterances, exact over
    every frame added. A position seen ``n`` times gets ``(sum + s * mean) / (n + s)`` with
    ``s = POSITION_SHRINK`` frames of the corpus's mean: late positions, which few utterances
    reach, lean toward it, and a position never seen is the corpus's mean."""

    def __init__(self, period: int, dim: int):
        self.period = period
        self.sums = torch.zeros(period, dim, dtype=torch.float64)
        self.counts = torch.zeros(period, dtype=torch.float64)

    def add(self, feats: Tensor) -> None:
        """Add one utterance's frames [F, D] (frame t at position t % period)."""
        pos = torch.arange(len(feats)) % self.period
        self.sums.index_add_(0, pos, feats.detach().to("cpu", torch.float64))
        self.counts += torch.bincount(pos, minlength=self.period).double()

    def means(self) -> Tensor:
        """[period, dim] float32."""
        total = self.counts.sum()
        if not total:
            raise ValueError("no frames added")
        overall = self.sums.sum(0) / total
        shrunk = (self.sums + POSITION_SHRINK * overall) / (self.counts[:, None] + POSITION_SHRINK)
        return shrunk.float()


def center_positions(feats: Tensor, means: Tensor) -> Tensor:
    """One utterance's frames [F, D] minus the mean at each frame's position (t % period)."""
    pos = torch.arange(len(feats), device=feats.device) % len(means)
    return feats - means.to(feats.device, feats.dtype)[pos]


def nearest(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Index of, and squared L2 distance to, the nearest centroid for each row of x [N, D].

    As fairseq's ApplyKmeans: ``x² - 2 x·C + |C|²``, in row chunks to bound memory.
    """
    c_norms = centroids.square().sum(1)
    labels = torch.empty(len(x), dtype=torch.long, device=x.device)
    dists = torch.empty(len(x), dtype=x.dtype, device=x.device)
    rows = max(1, CHUNK_ELEMENTS // len(centroids))
    for s in range(0, len(x), rows):
        chunk = x[s : s + rows]
        d = chunk.square().sum(1, keepdim=True) - 2 * chunk @ centroids.T + c_norms
        best = d.argmin(1, keepdim=True)  # the first of equals, as numpy; faster than min()
        labels[s : s + rows], dists[s : s + rows] = best[:, 0], d.gather(1, best)[:, 0]
    return labels, dists.clamp_min(0.0)


class KMeansQuantizer(nn.Module):
    """Features [N, D] -> unit ids [N]: the nearest centroid, computed in float32.

    With ``position_means`` [period, D] the N frames are one utterance's, and each is first
    centred on the mean at its position (``center_positions``). Move it with ``.to(device)``;
    casting it to another dtype would round the centroids.
    """

    def __init__(self, centroids: Tensor | np.ndarray,
                 position_means: Tensor | np.ndarray | None = None):
        super().__init__()
        self.register_buffer("centroids", torch.as_tensor(centroids, dtype=torch.float32).clone())
        means = (None if position_means is None
                 else torch.as_tensor(position_means, dtype=torch.float32).clone())
        if means is not None and (means.ndim != 2 or means.shape[1] != self.dim):
            raise CheckpointError(f"position means of shape {list(means.shape)} do not fit "
                                  f"centroids of dim {self.dim}")
        self.register_buffer("position_means", means)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> KMeansQuantizer:
        """The k-means at ``path`` (``load_centroids``), with its position means if any."""
        return cls(load_centroids(path), load_position_means(path))

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    def check_dim(self, dim: int, what: str) -> None:
        """Raise CheckpointError unless features of ``what`` (their description) fit."""
        if dim != self.dim:
            raise CheckpointError(f"{what}: features have dim {dim} but the k-means centroids "
                                  f"have dim {self.dim}")

    def forward(self, feats: Tensor) -> Tensor:
        """Unit ids (LongTensor [N], on the centroids' device) of feats [N, D], any dtype."""
        self.check_dim(feats.shape[-1], "input")
        centroids = self.centroids.float()
        feats = feats.to(centroids.device, torch.float32)
        if self.position_means is not None:
            feats = center_positions(feats, self.position_means)
        return nearest(feats, centroids)[0]


def kmeans_plusplus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Greedy k-means++ seeds [k, D]: each step keeps the best of 2 + log(k) sampled points."""
    trials = 2 + int(math.log(k))
    x_norms = x.square().sum(1)

    def sqdist(points: Tensor) -> Tensor:  # [M, N]
        return (points.square().sum(1, keepdim=True) - 2 * points @ x.T + x_norms).clamp_min(0)

    first = int(torch.randint(len(x), (1,), generator=generator))
    centers = x.new_empty(k, x.shape[1])
    centers[0] = x[first]
    closest = sqdist(x[first : first + 1])[0]
    for c in range(1, k):
        potential = closest.double().cumsum(0)
        draws = torch.rand(trials, generator=generator, dtype=torch.float64).to(x.device)
        candidates = torch.searchsorted(potential, draws * potential[-1]).clamp_max(len(x) - 1)
        closest_if = torch.minimum(closest, sqdist(x[candidates]))  # [trials, N]
        best = closest_if.double().sum(1).argmin()
        closest = closest_if[best]
        centers[c] = x[candidates[best]]
    return centers


def cluster_sums(x: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-cluster sums [k, D] and counts [k] (float), deterministic on every device."""
    sums = x.new_zeros(k, x.shape[1])
    rows = max(1, CHUNK_ELEMENTS // k)
    for s in range(0, len(x), rows):  # one-hot products: CUDA's index_add_ is nondeterministic
        chunk = labels[s : s + rows, None]
        sums += x.new_zeros(len(chunk), k).scatter_(1, chunk, 1.0).T @ x[s : s + rows]
    return sums, torch.bincount(labels, minlength=k).to(x.dtype)


def reseed_empty(centroids: Tensor, counts: Tensor, x: Tensor, dists: Tensor) -> None:
    """Move centroids of empty clusters onto the points of x farthest from their centroid."""
    empty = (counts == 0).nonzero().squeeze(1)
    if len(empty):
        farthest = dists.topk(min(len(empty), len(x))).indices
        centroids[empty[: len(farthest)]] = x[farthest]


def lloyd_step(x: Tensor, centroids: Tensor) -> tuple[Tensor, float]:
    """One full-batch update: (new centroids, inertia of the old ones)."""
    labels, dists = nearest(x, centroids)
    sums, counts = cluster_sums(x, labels, len(centroids))
    new = sums / counts.clamp_min(1)[:, None]
    reseed_empty(new, counts, x, dists)
    return new, float(dists.double().sum())


def minibatch_epoch(x: Tensor, centroids: Tensor, counts: Tensor, batch_size: int,
                    generator: torch.Generator) -> tuple[Tensor, float]:
    """One pass over x in random mini-batches, each centroid moving at rate 1 / its count.

    ``counts`` (points each centroid has absorbed so far) is updated in place. Returns the
    new centroids and the summed inertia of the batches before their updates.
    """
    centroids = centroids.clone()
    inertia = x.new_zeros((), dtype=torch.float64)
    for index in torch.randperm(len(x), generator=generator).to(x.device).split(batch_size):
        batch = x[index]
        labels, dists = nearest(batch, centroids)
        sums, n = cluster_sums(batch, labels, len(centroids))
        counts += n
        centroids += (sums - n[:, None] * centroids) / counts.clamp_min(1)[:, None]
        reseed_empty(centroids, counts, batch, dists)
        inertia += dists.double().sum()
    return centroids, float(inertia)


def learn_kmeans(feats: Tensor, k: int, *, seed: int, max_iter: int = 100,
                 batch_size: int | None = None, tol: float = 1e-4,
                 progress: Callable[[int, float], None] | None = None) -> tuple[Tensor, float]:
    """K-means over feats [N, D] on their device: (centroids [k, D] float32, inertia).

    k-means++ seeds (for mini-batch, from a sample of max(3 batch_size, 3 k) points, as
    scikit-learn), then at most ``max_iter`` iterations: full-batch Lloyd steps, or with
    ``batch_size`` epochs of mini-batch updates. It stops when the centroids' total squared
    shift in an iteration is at most ``tol`` times the features' mean variance (scikit-learn's
    rule). Empty clusters are re-seeded on the points farthest from their centroids.
    ``progress(iteration, inertia)`` is called after each iteration. The returned inertia is
    the sum of squared distances of all feats to their nearest centroid. Same seed, same
    result (on the same device).
    """
    x = feats.detach().float()
    if k < 1 or len(x) < k:
        raise ValueError(f"k-means with k={k} needs at least {max(k, 1)} points, got {len(x)}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    threshold = tol * float(x.var(0, unbiased=False).mean())
    sample = x
    if batch_size is not None:
        size = min(len(x), max(3 * batch_size, 3 * k))
        sample = x[torch.randperm(len(x), generator=generator)[:size].to(x.device)]
    centroids = kmeans_plusplus(sample, k, generator)
    counts = torch.zeros(k, device=x.device)
    for iteration in range(1, max_iter + 1):
        if batch_size is None:
            new, inertia = lloyd_step(x, centroids)
        else:
            new, inertia = minibatch_epoch(x, centroids, counts, batch_size, generator)
        shift = float((new - centroids).square().sum())
        centroids = new
        if progress is not None:
            progress(iteration, inertia)
        if shift <= threshold:
            break
    return centroids, float(nearest(x, centroids)[1].double().sum())


class FrameReservoir:
    """A uniform sample of at most ``max_frames`` frames from all frames ever added.

    Reservoir sampling (Algorithm R), vectorized per ``add``: frame i (counting from 0 over
    the whole corpus) replaces a random kept frame with probability max_frames / (i + 1).
    Frames are kept on the CPU in float32. Same seed and same adds, same sample. With a
    ``period``, each ``add`` is one utterance and a kept frame remembers its position in it
    (``t % period``, an exact float32 column beside it), to be centred once the position means
    are known (``centered``).
    """

    def __init__(self, max_frames: int, seed: int, period: int | None = None):
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        self.max_frames = max_frames
        self.period = period
        self.seen = 0
        self._generator = torch.Generator().manual_seed(seed)
        self._chunks: list[Tensor] = []  # kept frames, joined into one tensor once full

    def add(self, feats: Tensor) -> None:
        """Offer frames [F, D] to the sample (one utterance's, with a ``period``)."""
        feats = feats.detach().to("cpu", torch.float32)
        if self.period is not None:
            pos = (torch.arange(len(feats)) % self.period).float()
            feats = torch.cat([feats, pos[:, None]], 1)
        index = self.seen + torch.arange(len(feats), dtype=torch.float64)
        slot = (torch.rand(len(feats), generator=self._generator, dtype=torch.float64)
                * (index + 1)).long()
        free = max(0, min(len(feats), self.max_frames - self.seen))
        self.seen += len(feats)
        if free:
            self._chunks.append(feats[:free].clone())
        replace = slot[free:] < self.max_frames
        if not replace.any():
            return
        slot, rows = slot[free:][replace], feats[free:][replace]
        slots, where = torch.unique(slot, return_inverse=True)
        last = torch.zeros(len(slots), dtype=torch.long).scatter_reduce_(
            0, where, torch.arange(len(slot)), "amax")  # a later frame wins a shared slot
        self._joined()[slots] = rows[last]

    def frames(self) -> Tensor:
        """The sample [n, D], n = min(seen, max_frames)."""
        if not self._chunks:
            return torch.empty(0, 0)
        return self._joined() if self.period is None else self._joined()[:, :-1]

    def centered(self, means: Tensor) -> Tensor:
        """The sample [n, D], each frame minus ``means`` [period, D] at its position."""
        joined = self._joined()
        return joined[:, :-1] - means.float()[joined[:, -1].long()]

    def _joined(self) -> Tensor:
        if len(self._chunks) > 1:
            self._chunks = [torch.cat(self._chunks)]
        return self._chunks[0]
