"""``audio.mel``: log-mel spectrogram cut into time patches, projected linearly into the model.

Any input is first brought to one form (:mod:`anymodal.media.audio`): mono, at
``sample_rate``. So 8 kHz stereo and 48 kHz mono recordings of the same sound give the same
number of tokens, on the same grid, with nearly the same values (the 8 kHz file just has no
energy above 4 kHz). Then:

1. log-mel spectrogram (:class:`torchaudio.transforms.MelSpectrogram`; defaults are Whisper's
   25 ms window and 10 ms hop at 16 kHz, Radford et al. 2022), ``n_mels`` bins;
2. Whisper's normalisation: ``log10``, floor at (max - 8), then ``(x + 4) / 4``, which puts
   speech-level clips around [-1, 1] whatever their recording gain;
3. cut along time into patches of ``patch_frames`` frames x **all** mel bins; each patch is one
   continuous token of ``input_dim = n_mels * patch_frames`` values, laid out (mel, frame).
   The last patch is padded with the floor value (silence).

Why full-band time patches, not AST-style 16 x 16 (frequency, time) patches (Gong et al.
2021): audio is a sequence in time, and a (time, freq) grid multiplies the token count by
``n_mels / 16`` (4x at 64 mels) for the same clip, which a small early-fusion model pays in
every layer. Frequency position is not lost: each bin sits at a fixed place in the token
vector, so the linear input projection knows it. Tokens lie on a (n_patches, 1, 1) grid, so
M-RoPE's temporal axis follows time (one step per ``patch_frames * hop / sample_rate`` s,
160 ms with the defaults).

>>> tok = am.create_tokenizer("audio.mel", n_mels=64, patch_frames=16)      # doctest: +SKIP
>>> tok.encode(am.Audio("one_second.wav")).grid                             # doctest: +SKIP
(7, 1, 1)
"""

from __future__ import annotations

import math

import torch

from anymodal.errors import MediaError
from anymodal.media.audio import audio_info, expected_samples, load_audio
from anymodal.media.limits import MediaLimits
from anymodal.segments import Segment
from anymodal.tokenizers.base import ModalityTokenizer, TokenBlock
from anymodal.tokenizers.registry import register_tokenizer

_SEGMENT_OPTIONS = ("sample_rate",)  # the rate of a tensor input


def mel_patches(logmel: torch.Tensor, patch_frames: int, pad_value: float) -> torch.Tensor:
    """(n_mels, frames) -> (ceil(frames / pf), n_mels * pf), padding the last patch with ``pad_value``."""
    n_mels, frames = logmel.shape
    n = math.ceil(frames / patch_frames)
    if n * patch_frames != frames:
        logmel = torch.nn.functional.pad(logmel, (0, n * patch_frames - frames), value=pad_value)
    return logmel.reshape(n_mels, n, patch_frames).permute(1, 0, 2).reshape(n, n_mels * patch_frames)


class AudioMelTokenizer(ModalityTokenizer):
    """Continuous log-mel time patches. ``input_dim = n_mels * patch_frames``.

    Options: ``sample_rate`` (every input is resampled to it), ``n_mels``, ``n_fft``, ``hop``
    (samples between frames), ``patch_frames`` (frames per token), limits ``max_seconds`` and
    ``max_bytes`` (over them: :class:`MediaError`), ``isolate`` (decode in a worker process so
    a native decoder crash becomes a MediaError) with its ``timeout``.
    """

    modality = "audio"
    kind = "continuous"
    bidirectional = True

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 64,
        n_fft: int = 400,
        hop: int = 160,
        patch_frames: int = 16,
        max_seconds: float = 30.0,
        max_bytes: int = 256 * 1024 * 1024,
        isolate: bool = False,
        timeout: float = 60.0,
    ):
        sizes = dict(sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft, hop=hop, patch_frames=patch_frames)
        for k, v in sizes.items():
            if v <= 0:
                raise ValueError(f"audio.mel: {k} must be > 0, got {v}")
        if n_mels > n_fft // 2 + 1:
            raise ValueError(f"audio.mel: n_mels={n_mels} exceeds the {n_fft // 2 + 1} FFT bins of n_fft={n_fft}")
        self.sample_rate, self.n_mels, self.n_fft, self.hop, self.patch_frames = (
            sample_rate, n_mels, n_fft, hop, patch_frames)
        self.limits = MediaLimits(max_bytes=max_bytes, max_seconds=max_seconds)
        self.isolate, self.timeout = isolate, timeout
        self.input_dim = n_mels * patch_frames
        self._mel = None  # torchaudio is imported on first encode, not when the registry loads

    def _source_rate(self, segment: Segment) -> int | None:
        unknown = set(segment.options) - set(_SEGMENT_OPTIONS)
        if unknown:
            raise ValueError(f"audio.mel: unknown segment options {sorted(unknown)} for {segment.source}; "
                             f"known: {_SEGMENT_OPTIONS}")
        return segment.options.get("sample_rate")

    def _patches_for(self, num_samples: int) -> int:
        frames = 1 + num_samples // self.hop  # centred STFT frames
        return math.ceil(frames / self.patch_frames)

    def num_tokens(self, segment: Segment) -> int:
        info = audio_info(segment.data, segment.source, limits=self.limits, source_rate=self._source_rate(segment),
                          isolate=self.isolate, timeout=self.timeout)
        return self._patches_for(expected_samples(info, self.sample_rate))

    def logmel(self, wave: torch.Tensor) -> torch.Tensor:
        """(samples,) mono at ``sample_rate`` -> (n_mels, 1 + samples // hop) normalised log-mel."""
        if self._mel is None:
            import torchaudio

            # pad_mode="constant": reflect padding (the default) fails on clips shorter than n_fft / 2
            self._mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop, n_mels=self.n_mels,
                power=2.0, center=True, pad_mode="constant")
        with torch.no_grad():
            x = self._mel(wave.float()).clamp_min(1e-10).log10()
            x = torch.maximum(x, x.max() - 8.0)
            return (x + 4.0) / 4.0

    def encode(self, segment: Segment) -> TokenBlock:
        wave = load_audio(segment.data, segment.source, sample_rate=self.sample_rate,
                          source_rate=self._source_rate(segment), limits=self.limits,
                          isolate=self.isolate, timeout=self.timeout)  # (samples,)
        if wave.numel() == 0:
            raise MediaError(segment.source, "no audio samples")
        x = self.logmel(wave)  # (n_mels, frames)
        floor = float(x.max()) - 2.0  # the normalised floor (max - 8 before "/ 4"): silence
        vectors = mel_patches(x, self.patch_frames, floor)  # (n_patches, n_mels * patch_frames)
        return TokenBlock(vectors=vectors.float().contiguous(), grid=(vectors.shape[0], 1, 1))


register_tokenizer("audio.mel")(AudioMelTokenizer)
