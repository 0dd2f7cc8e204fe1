"""The unit HiFi-GAN: published layout, parity with fairseq, batching, chunking, checks."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from fakes.hifigan import (
    fabricate_vocoder,
    multispeaker,
    one_torch_thread,
    published_config,
    random_generator,
    small_config,
    without_duration_predictor,
)

from sgpt.core.errors import CheckpointError, RecordError, SgptError
from sgpt.vocode.architectures import load_vocoder
from sgpt.vocode.hifigan import MHUBERT_KM1000_CONFIG, HiFiGANConfig, read_config
from sgpt.vocode.vocoder import Request, Vocoder, padded_batches


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory):
    return fabricate_vocoder(tmp_path_factory.mktemp("full"), published_config(), seed=1)


@pytest.fixture(scope="module")
def spk_dir(tmp_path_factory):
    return fabricate_vocoder(tmp_path_factory.mktemp("spk"), multispeaker(published_config()),
                             seed=2)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    return fabricate_vocoder(tmp_path_factory.mktemp("small"), small_config(), seed=3)


def units(n: int, k: int = 1000, seed: int = 0) -> list[int]:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# -- config --------------------------------------------------------------------------------------


def test_published_config_round_trips():
    cfg = HiFiGANConfig.from_dict(json.loads(json.dumps(MHUBERT_KM1000_CONFIG)))
    assert cfg.to_dict() == MHUBERT_KM1000_CONFIG
    assert cfg.hop == 320 and cfg.exact_hop and cfg.dur_predictor_params is not None


@pytest.mark.parametrize("change, message", [
    ({"upsample_rates": None}, "missing field(s) upsample_rates"),
    ({"f0": True}, "F0"),
    ({"embedder_params": {"x": 1}}, "speaker-embedder"),
    ({"model_in_dim": 256}, "model_in_dim 256"),
    ({"resblock_dilation_sizes": [[1, 3, 5]]}, "one list per resblock kernel"),
    ({"upsample_kernel_sizes": [11, 8, 8, 4]}, "differ in length"),
])
def test_config_errors_name_the_file_and_the_field(tmp_path, change, message):
    cfg = {**MHUBERT_KM1000_CONFIG, **change}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=str(path)) as e:
        read_config(str(path))
    assert message in str(e.value)


# -- loading -------------------------------------------------------------------------------------


def test_truncated_checkpoint_is_one_error_naming_it(tmp_path, small_dir):
    g = small_dir / "g_00500000"
    cut = tmp_path / "g_00000001"
    cut.write_bytes(g.read_bytes()[: g.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{cut}: not a readable torch checkpoint"):
        load_vocoder(str(cut), str(small_dir / "config.json"))


def test_checkpoint_not_matching_its_config(tmp_path, small_dir):
    cfg = json.loads((small_dir / "config.json").read_text())
    cfg["num_embeddings"] = 50
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"dict.weight \(100, 16\) != \(50, 16\)"):
        load_vocoder(str(small_dir / "g_00500000"), str(tmp_path / "config.json"))


def test_do_file_and_code_in_pickle_are_refused(tmp_path, small_dir):
    do = tmp_path / "do_00000001"
    torch.save({"mpd": {}, "msd": {}}, do)
    with pytest.raises(CheckpointError, match="pass the g_ file"):
        load_vocoder(str(do), str(small_dir / "config.json"))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "g_00000002"
    evil.write_bytes(pickle.dumps({"generator": Evil()}))
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_vocoder(str(evil), str(small_dir / "config.json"))


def test_directory_takes_newest_generator(tmp_path):
    fabricate_vocoder(tmp_path, small_config(), seed=1, step=100)
    fabricate_vocoder(tmp_path, small_config(), seed=2, step=2000)
    newest = load_vocoder(str(tmp_path))
    g2000 = torch.load(tmp_path / "g_00002000", weights_only=True)["generator"]
    assert torch.equal(newest.dict.weight, g2000["dict.weight"])


# -- parity with fairseq's CodeHiFiGANVocoder ----------------------------------------------------


def fairseq_vocoder(directory):
    vocoder = pytest.importorskip("fairseq.models.text_to_speech.vocoder")
    cfg = json.loads((directory / "config.json").read_text())
    return vocoder.CodeHiFiGANVocoder(str(directory / "g_00500000"), cfg)


@pytest.fixture(scope="module")
def full_pair(full_dir):
    """fairseq's CodeHiFiGANVocoder and ours on the published config, same random weights."""
    return fairseq_vocoder(full_dir), load_vocoder(str(full_dir))


@pytest.fixture(scope="module")
def spk_pair(spk_dir):
    return fairseq_vocoder(spk_dir), load_vocoder(str(spk_dir))


@pytest.mark.parametrize("dur", [False, True], ids=["units", "dur-prediction"])
def test_parity_with_fairseq_published_config(full_pair, dur):
    ref, ours = full_pair
    u = units(16, seed=5)
    with torch.no_grad():
        want = ref({"code": torch.tensor([u])}, dur_prediction=dur)
        got, lengths = ours(torch.tensor([u]), predict_durations=dur)
    assert got.shape[1] == lengths[0] == want.shape[0]
    assert want.abs().max() > 0.1  # a real signal, not near-silence
    diff = (got[0] - want).abs().max().item()
    print(f"parity published config, dur_prediction={dur}: max abs diff {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.parametrize("dur", [False, True], ids=["units", "dur-prediction"])
def test_parity_with_fairseq_speaker_embedding(spk_pair, dur):
    ref, ours = spk_pair
    u = units(12, seed=6)
    with torch.no_grad():
        want = ref({"code": torch.tensor([u]), "spkr": torch.tensor([[3]])}, dur_prediction=dur)
        got, _ = ours(torch.tensor([u]), speaker=torch.tensor([3]), predict_durations=dur)
        other, _ = ours(torch.tensor([u]), speaker=torch.tensor([1]), predict_durations=dur)
    diff = (got[0] - want).abs().max().item()
    print(f"parity multi-speaker, dur_prediction={dur}: max abs diff {diff:.2e}")
    assert diff <= 1e-4
    assert (other[0] - want).abs().max() > 1e-2  # the speaker matters


def test_state_dict_keys_are_fairseqs(spk_dir):
    codehifigan = pytest.importorskip("fairseq.models.text_to_speech.codehifigan")
    cfg = json.loads((spk_dir / "config.json").read_text())
    ref = codehifigan.CodeGenerator(cfg)
    ours = torch.load(spk_dir / "g_00500000", weights_only=True)["generator"]
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ours.items()}


# -- batches and chunks --------------------------------------------------------------------------


def mixed_requests(k: int) -> list[Request]:
    return [Request("a", units(7, k, 1), None, True),
            Request("b", units(19, k, 2), [1 + i % 3 for i in range(19)], False),
            Request("c", units(3, k, 3), None, False),
            Request("d", units(30, k, 4), None, True),
            Request("e", units(1, k, 5), [4], False)]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_batched_equals_one_at_a_time(tmp_path, dtype, tol):
    spk_dir = fabricate_vocoder(tmp_path, multispeaker(small_config()), seed=4)
    model = load_vocoder(str(spk_dir), dtype=dtype)
    requests = mixed_requests(100)
    alone = Vocoder(model, speaker=2, batch_size=1)(requests)
    # every length in one padded batch (by default batches are cut where padding costs)
    batched = Vocoder(model, speaker=2, batch_size=8, max_padding=float("inf"))(requests)
    for r, a, b in zip(requests, alone, batched):
        assert a.shape == b.shape
        if r.durations:
            assert len(a) == 320 * sum(r.durations)
    diff = max(np.abs(a - b).max() for a, b in zip(alone, batched))
    print(f"batched vs one at a time ({dtype}): max abs diff {diff:.2e}")
    assert diff <= tol


def test_padded_batch_with_autograd_equals_inference(small_dir):
    """Padding is zeroed in place at inference, multiplied away under autograd: same audio."""
    model = load_vocoder(str(small_dir), dtype=torch.float64)
    lengths = torch.tensor([9, 5])
    x, lengths = model.frames(torch.tensor([units(9, 100, 1), units(9, 100, 2)]), lengths)
    with torch.no_grad():
        want, _ = model.decode(x.clone(), lengths)
    got, _ = model.decode(x.clone().requires_grad_(), lengths)
    got.sum().backward()
    assert torch.allclose(got.detach(), want, atol=1e-12)


def test_batches_are_cut_where_padding_would_cost():
    lengths = [10, 10, 11, 12, 20, 21, 22, 23, 24, 60]
    assert padded_batches(lengths, 8, lambda n: n) == [
        [10, 10, 11, 12], [20, 21, 22, 23, 24], [60]]
    assert padded_batches(lengths, 3, lambda n: n) == [
        [10, 10, 11], [12, 20, 21], [22, 23, 24], [60]]
    assert padded_batches(lengths, 8, lambda n: n, float("inf")) == [lengths[:8], lengths[8:]]
    for batch in padded_batches(lengths, 8, lambda n: n):
        assert len(batch) * max(batch) <= 1.25 * sum(batch)


def test_chunks_join_without_seams(small_dir):
    model = load_vocoder(str(small_dir))
    request = [Request("long", units(40, 100, seed=9), None, True)]
    whole = Vocoder(model)(request)[0]
    for chunk in (17, 50):
        pieces = Vocoder(model, chunk=chunk, batch_size=4)(request)[0]
        assert pieces.shape == whole.shape
        diff = np.abs(pieces - whole).max()
        print(f"--chunk {chunk} vs whole sequence: max abs diff {diff:.2e}")
        assert diff <= 1e-5
    short = Vocoder(model, chunk=50)
    short.context = 2  # too little context: the seams differ
    assert np.abs(short(request)[0] - whole).max() > 1e-2


def test_receptive_field_bounds_the_influence_of_a_frame(small_dir):
    model = load_vocoder(str(small_dir), dtype=torch.float64)
    rf = model.cfg.receptive_field()
    x, lengths = model.frames(torch.tensor([units(80, 100, 1)]), torch.tensor([80]))
    y = x.clone()
    y[:, :, 40] += 1.0
    with torch.no_grad():
        a, _ = model.decode(x, lengths)
        b, _ = model.decode(y, lengths)
    changed = torch.nonzero((a - b).abs()[0] > 0).flatten() // 320
    assert changed.min() >= 40 - rf and changed.max() <= 40 + rf
    assert changed.max() - changed.min() > rf  # and the bound is not loose by much


# -- records -------------------------------------------------------------------------------------


def test_prepare_checks_and_duration_modes(tmp_path):
    model = load_vocoder(str(fabricate_vocoder(tmp_path, small_config())))
    voc = Vocoder(model)
    for record, reason in [
        ({"id": "x", "units": [1, 100]}, "unit 100 in 'units' is outside 0..99"),
        ({"id": "x", "units": []}, "'units' is empty"),
        ({"id": "x"}, "no 'units'"),
        ({"id": "x", "units": [1, 2], "durations": [1]}, "one per unit"),
        ({"id": "x", "units": [1], "units_meta": {"k": 1000}}, "k=1000"),
    ]:
        with pytest.raises(RecordError, match=reason):
            voc.prepare(record)
    dedup = {"id": "a", "units": [1, 2], "units_meta": {"dedup": True}}
    km = {"id": "b", "units": [1, 1, 2], "units_meta": {"dedup": False}}
    timed = {"id": "c", "units": [1, 2], "durations": [2, 3]}
    assert voc.prepare(dedup).predict and not voc.prepare(km).predict
    assert voc.prepare(timed).durations == [2, 3] and not voc.prepare(timed).predict
    on = Vocoder(model, dur_prediction="on")
    assert all(on.prepare(r).predict for r in (dedup, km, timed))
    off = Vocoder(model, dur_prediction="off")
    assert not any(off.prepare(r).predict for r in (dedup, km, timed))
    assert len(voc([voc.prepare(timed)])[0]) == 5 * 320
    assert len(voc([voc.prepare(km)])[0]) == 3 * 320


def test_vocoder_option_errors(tmp_path):
    plain = load_vocoder(str(fabricate_vocoder(tmp_path / "a", without_duration_predictor(
        small_config()))))
    with pytest.raises(SgptError, match="no duration predictor"):
        Vocoder(plain, dur_prediction="on")
    with pytest.raises(SgptError, match="one speaker"):
        Vocoder(plain, speaker=1)
    spk = load_vocoder(str(fabricate_vocoder(tmp_path / "b", multispeaker(small_config(), 4))))
    with pytest.raises(SgptError, match="speakers 0 to 3"):
        Vocoder(spk, speaker=4)
    assert Vocoder(spk).speaker == 0


def test_bfloat16_runs_close_to_float32(small_dir):
    requests = mixed_requests(100)[:2]
    a = Vocoder(load_vocoder(str(small_dir)))(requests)
    b = Vocoder(load_vocoder(str(small_dir), dtype=torch.bfloat16))(requests)
    assert all(x.dtype == np.float32 and x.shape == y.shape for x, y in zip(a, b))
    assert max(np.abs(x - y).mean() for x, y in zip(a, b)) < 0.1


def test_random_generator_is_loud():
    model = random_generator(small_config(), seed=0).eval().fold_weight_norm()
    with torch.no_grad():
        wave, _ = model(torch.tensor([units(10, 100)]))
    assert 0.05 < wave.std() < 0.9
