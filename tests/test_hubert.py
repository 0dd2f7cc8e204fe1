"""HuBERT features without fairseq: parity with fairseq, batching, transformers dirs, bf16."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from fakes.mhubert import make_mhubert_checkpoint
from torch.utils._python_dispatch import TorchDispatchMode

from sgpt.core.audio import load_audio
from sgpt.core.errors import CheckpointError
from sgpt.core.safe_pickle import torch_load
from sgpt.units.hubert import load_hubert
from sgpt.units.kmeans import KMeansQuantizer, learn_kmeans

LAYERS = 3


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """Fabricated files: mHuBERT, with task.normalize, with pre-hydra args, HuBERT-large style."""
    d = tmp_path_factory.mktemp("mhubert")
    return {
        "plain": make_mhubert_checkpoint(d / "mhubert_fake.pt", encoder_layers=LAYERS),
        "normalize": make_mhubert_checkpoint(d / "mhubert_norm.pt", encoder_layers=LAYERS,
                                             normalize=True, seed=1),
        "legacy": make_mhubert_checkpoint(d / "mhubert_legacy.pt", encoder_layers=LAYERS,
                                          legacy_args=True),
        "large": make_mhubert_checkpoint(d / "hubert_large.pt", encoder_layers=LAYERS,
                                         normalize=True, large=True, seed=2),
    }


@pytest.fixture(scope="module")
def waves(speech_dir) -> list[torch.Tensor]:
    """Three espeak-ng sentences of different lengths, 16 kHz."""
    return [torch.from_numpy(load_audio(speech_dir / f"s{i}.wav")) for i in range(3)]


def encode_alone(encoder, wave: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        feats, lengths = encoder(wave[None], torch.tensor([len(wave)]))
    assert feats.shape[1] == int(lengths[0])
    return feats[0]


def encode_batch(encoder, waves: list[torch.Tensor]) -> list[torch.Tensor]:
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    with torch.inference_mode():
        feats, lengths = encoder(batch, torch.tensor([len(w) for w in waves]))
    for row, n in zip(feats, lengths.tolist()):
        assert not row[n:].any()
    return [row[:n] for row, n in zip(feats, lengths.tolist())]


def test_loads_and_encodes(checkpoints, waves):
    encoder = load_hubert(checkpoints["plain"], layer=2)
    assert (encoder.name, encoder.layer, encoder.dim) == ("hubert", 2, 64)
    assert encoder.frame_rate == 50.0 and encoder.source == "mhubert_fake"
    assert not encoder.normalize and load_hubert(checkpoints["normalize"], 1).normalize
    assert len(encoder.model.encoder.layers) == 2
    feats = encode_alone(encoder, waves[0])
    assert feats.shape == ((len(waves[0]) - 80) // 320, 64)  # fairseq's frame count
    assert torch.isfinite(feats).all()
    legacy = load_hubert(checkpoints["legacy"], layer=2)  # same seed: same weights
    assert torch.equal(encode_alone(legacy, waves[0]), feats)


# Run in a subprocess: importing fairseq reconfigures logging (root at DEBUG, to stderr).
FAIRSEQ_FEATURES = """
import sys
import torch
import torch.nn.functional as F
try:
    from fairseq import checkpoint_utils
except Exception as e:
    print(f"{type(e).__name__}: {e}")
    sys.exit(77)
wave_file, out_file, *checkpoints = sys.argv[1:]
wave, feats = torch.load(wave_file), {}
for ckpt in checkpoints:
    (model,), _, task = checkpoint_utils.load_model_ensemble_and_task([ckpt])
    x = F.layer_norm(wave, wave.shape) if task.cfg.normalize else wave
    for layer in (1, len(model.encoder.layers)):
        with torch.inference_mode():
            feats[ckpt, layer] = model.eval().extract_features(
                source=x[None], padding_mask=None, mask=False, output_layer=layer)[0][0]
torch.save(feats, out_file)
"""


def test_parity_with_fairseq(checkpoints, waves, tmp_path):
    torch.save(waves[0], tmp_path / "wave.pt")
    paths = [str(checkpoints[kind]) for kind in ("plain", "normalize", "large")]
    # fairseq's torch.load predates weights_only=True being the default
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    run = subprocess.run([sys.executable, "-c", FAIRSEQ_FEATURES, str(tmp_path / "wave.pt"),
                          str(tmp_path / "ref.pt"), *paths], capture_output=True, text=True,
                         env=env)
    if run.returncode == 77:
        pytest.skip(f"fairseq cannot be imported ({run.stdout.strip()}): parity not checked")
    assert run.returncode == 0, run.stderr[-3000:]
    reference = torch.load(tmp_path / "ref.pt")
    assert len(reference) == 2 * len(paths)
    for (path, layer), ref in reference.items():
        feats = encode_alone(load_hubert(path, layer), waves[0])
        assert feats.shape == ref.shape
        assert (feats - ref).abs().max() <= 1e-4, (path, layer)


def test_batch_equals_one_at_a_time(checkpoints, waves):
    for kind in ("plain", "normalize", "large"):
        encoder = load_hubert(checkpoints[kind], LAYERS)
        alone = [encode_alone(encoder, w) for w in waves]
        batched = encode_batch(encoder, waves)
        centroids = torch.cat(alone)[torch.randperm(sum(len(a) for a in alone))[:50]]
        for a, b in zip(alone, batched):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
            assert torch.equal(torch.cdist(a, centroids).argmin(1),
                               torch.cdist(b, centroids).argmin(1))


def test_transformers_dir_round_trip(checkpoints, waves, tmp_path):
    encoder = load_hubert(checkpoints["normalize"], LAYERS)
    encoder.model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(
        json.dumps({"feature_extractor_type": "Wav2Vec2FeatureExtractor",
                    "sampling_rate": 16000, "do_normalize": encoder.normalize}))
    again = load_hubert(tmp_path / "hf", layer=2)
    assert (again.normalize, again.layer, again.source) == (True, 2, "hf")
    expected = encode_alone(load_hubert(checkpoints["normalize"], 2), waves[1])
    torch.testing.assert_close(encode_alone(again, waves[1]), expected, atol=1e-6, rtol=0)
    with pytest.raises(CheckpointError, match="has 3 encoder layers"):
        load_hubert(tmp_path / "hf", layer=4)


class IdealBfloat16(TorchDispatchMode):
    """Runs float32 code as an ideal bfloat16 backend would: each op computed exactly (in
    float32), its result rounded to bfloat16. Its distance from float32 is what bfloat16
    itself must cost a model; a real backend rounds also inside some ops (the attention
    probabilities before they weight the values), at most as often as between them."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                t.copy_(t.to(torch.bfloat16))
        return out


def encode_ideal_bfloat16(encoder, waves: list[torch.Tensor]) -> list[torch.Tensor]:
    rounded = copy.deepcopy(encoder)
    for p in rounded.parameters():
        p.data = p.data.to(torch.bfloat16).float()
    with IdealBfloat16():
        return encode_batch(rounded, [w.to(torch.bfloat16).float() for w in waves])


def frame_errors(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(x.float() - y.float()).norm(dim=1) for x, y in zip(a, b)])


def test_bfloat16_tracks_float32_within_what_bfloat16_costs(checkpoints, waves):
    """bf16 features are as far from float32 as bf16 rounding makes them, on every backend.

    On an AMX Xeon the bf16 oneDNN convolutions put them a quarter of their scale off; the
    encoder runs its convolutions in float32 on the CPU since."""
    for kind in ("plain", "large"):
        encoder = load_hubert(checkpoints[kind], LAYERS)
        fp32 = encode_batch(encoder, waves)
        ideal = frame_errors(encode_ideal_bfloat16(encoder, waves), fp32)
        bf16 = encode_batch(copy.deepcopy(encoder).to(torch.bfloat16), waves)
        assert all(b.dtype == torch.bfloat16 for b in bf16)
        real = frame_errors(bf16, fp32)
        scale = torch.cat(fp32).norm(dim=1).mean()
        print(f"{kind}: bf16 vs fp32 per frame: rms {real.square().mean().sqrt():.4f}, "
              f"max {real.max():.4f}; ideal bf16 rms {ideal.square().mean().sqrt():.4f}, max "
              f"{ideal.max():.4f}; feature norm {scale:.2f}")
        # twice as many roundings at most doubles the error's variance: sqrt(2) on its rms
        assert real.square().mean().sqrt() <= 2 * ideal.square().mean().sqrt(), kind
        assert real.max() <= 2 * ideal.max(), kind


def test_bfloat16_units_equal_float32_units_where_the_margin_allows(checkpoints, waves):
    """A frame's unit can change only if its features move by half its margin (the distance to
    the second-nearest centroid minus the nearest's): those frames may differ, no others."""
    encoder = load_hubert(checkpoints["plain"], LAYERS)
    fp32 = torch.cat(encode_batch(encoder, waves))
    centroids, _ = learn_kmeans(fp32, 20, seed=0, max_iter=50)
    quantize = KMeansQuantizer(centroids)
    ideal = frame_errors([torch.cat(encode_ideal_bfloat16(encoder, waves))], [fp32])
    bf16 = torch.cat(encode_batch(copy.deepcopy(encoder).to(torch.bfloat16), waves))
    allowed = 2 * ideal.max()  # what the features test above holds every frame to
    nearest_two = torch.cdist(fp32, centroids).topk(2, dim=1, largest=False).values
    margin = nearest_two[:, 1] - nearest_two[:, 0]
    safe = margin > 2 * allowed
    same = quantize(bf16) == quantize(fp32)
    print(f"units: {int(same.sum())} of {len(same)} frames equal; {int(safe.sum())} have a "
          f"margin over {2 * allowed:.4f}, {int(same[safe].sum())} of them equal")
    assert safe.sum() >= len(safe) // 4  # the check covers many frames, not a handful
    assert same[safe].all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(checkpoints, waves):
    encoder = load_hubert(checkpoints["plain"], LAYERS)
    cpu = encode_batch(encoder, waves)
    cuda = encode_batch(encoder.cuda(), [w.cuda() for w in waves])
    for a, b in zip(cpu, cuda):
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=1e-4)


def test_bad_checkpoints(checkpoints, tmp_path):
    ckpt = torch_load(checkpoints["plain"])
    ckpt["task_state"] = {}  # its fairseq Dictionary is a Stub, which cannot be saved again
    del ckpt["model"]["encoder.layers.0.fc1.weight"], ckpt["model"]["post_extract_proj.bias"]
    torch.save(ckpt, tmp_path / "missing_keys.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "not_fairseq.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage" * 100)
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    cases = [
        (tmp_path / "nope.pt", 11, "no such file"),
        (tmp_path / "garbage.pt", 11, "not a readable torch checkpoint"),
        (tmp_path / "not_fairseq.pt", 11, "not a fairseq checkpoint"),
        (tmp_path / "missing_keys.pt", 1,
         "not a HuBERT checkpoint: missing weights post_extract_proj.bias, "
         "encoder.layers.0.fc1.weight"),
        (checkpoints["plain"], 4, "layer 4 is out of range: the model has 3 encoder layers"),
        (checkpoints["plain"], 0, "use 1 to 3"),
        (tmp_path / "empty_dir", 11, "without config.json"),
        (tmp_path / "bert", 11, "not a HuBERT model (model_type is 'bert')"),
    ]
    for path, layer, reason in cases:
        with pytest.raises(CheckpointError) as e:
            load_hubert(path, layer)
        assert reason in str(e.value) and str(path) in str(e.value), str(e.value)
        assert "\n" not in str(e.value)
