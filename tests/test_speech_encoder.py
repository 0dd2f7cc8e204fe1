import numpy as np
import torch

from sgpt.core.audio import load_audio
from sgpt.core.stream import dedup
from sgpt.units.kmeans import KMeansQuantizer
from sgpt.units.mfcc import MfccEncoder
from sgpt.units.speech_encoder import SpeechEncoder, chunk_bounds, plan_batches


def test_dedup_merges_runs_into_durations():
    assert dedup([5, 5, 7, 5, 5, 5]) == ([5, 7, 5], [2, 1, 3])
    assert dedup([]) == ([], [])


def test_chunk_bounds_cover_the_file_and_never_leave_an_unencodable_tail():
    assert chunk_bounds(2500, 1000) == [(0, 1000), (1000, 2000), (2000, 2500)]
    assert chunk_bounds(2000, 1000) == [(0, 1000), (1000, 2000)]
    assert chunk_bounds(2100, 1000) == [(0, 1000), (1000, 2100)]  # 100-sample tail joins
    assert chunk_bounds(5, 1000) == [(0, 5)]


def test_plan_batches_bounds_padded_size_longest_first():
    lengths = [100, 300, 200, 300, 50]
    batches = plan_batches(lengths, 600)
    assert sorted(i for b in batches for i in b) == list(range(5))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 600
    assert plan_batches(lengths, 0) == [[1], [3], [2], [0], [4]]


def test_long_files_are_encoded_in_pieces_like_the_reference(speech_dir):
    wave = load_audio(str(speech_dir / "s0.wav"))
    enc = SpeechEncoder(MfccEncoder(), KMeansQuantizer(torch.randn(8, 39)), max_chunk=8000)
    whole = enc.features([wave])[0]
    pieces = [enc.features([wave[a:b]])[0] for a, b in chunk_bounds(len(wave), 8000)]
    assert torch.equal(whole, torch.cat(pieces))
    # batching pieces of several files together changes nothing
    batched = enc.features([wave, wave[:5000]], max_samples=10 ** 9)
    assert torch.allclose(batched[0], whole, atol=1e-4)  # features have unit variance
    out = enc([wave])[0]
    assert sum(out["durations"]) == len(whole)
    assert np.all(np.diff(out["units"]) != 0)
