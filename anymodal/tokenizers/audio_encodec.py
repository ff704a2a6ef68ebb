"""``audio.encodec``: audio as EnCodec residual codebook codes (Défossez et al. 2022), decodable.

The real ``encodec`` package's 24 kHz model (causal SEANet encoder/decoder + residual vector
quantizer with 1024-entry codebooks at 75 frames/s). ``bandwidth`` (kbps) sets the number of
codebooks ``n_q``: 1.5 -> 2, 3 -> 4, 6 -> 8, 12 -> 16, 24 -> 32 (0.75 kbps each).

The (n_q, T) code matrix becomes one id sequence in one of two layouts (``layout``):

- ``flatten`` (AnyGPT, SpeechGPT-style): frame by frame, codebook 0..n_q-1 inside each frame:
  ``c0[0] c1[0] c0[1] c1[1] ...``; ``T * n_q`` ids on a ``(T, 1, n_q)`` grid.
- ``delay`` (MusicGen, Copet et al. 2023): codebook k is shifted right by k frames, so when the
  model writes frame s of codebook k it has already written frame s of the coarser codebooks;
  the holes are one extra ``<delay-pad>`` id. ``(T + n_q - 1) * n_q`` ids.

Codebook k owns its own id sub-range ``[k * 1024, (k + 1) * 1024)`` (the ``delay`` pad is id
``n_q * 1024``), so ``vocab_size = n_q * 1024`` (+1 for ``delay``); generation restricts each
slot to its codebook's range (:meth:`EncodecAudioTokenizer.allowed_range`).

Weights (nothing is ever downloaded): ``checkpoint`` = the official ``encodec_24khz-d7cc33bc.th``
state dict (read with ``torch.load(weights_only=True)``), or ``path`` = a folder holding
``encodec.safetensors`` (what a model export writes). Neither: the official file from the
``encodec`` package's own cache (``torch.hub.get_dir()/checkpoints``, filled by
``EncodecModel.encodec_model_24khz()``) when it is there; else refused with the way to get it,
unless ``random_init=True``: a ``seed``-ed random init whose codebooks are drawn around the
encoder's output on a fixed probe signal (the package's own init is all zeros until k-means
runs on training data, which would map every input to code 0). Random codes are still a
deterministic function of the waveform, so a model can learn them; the decoded sound is noise
(``pretrained`` is False, and checks that judge decoded audio refuse to score it).

``seconds``: pad (with silence) or cut every input to this length, which fixes the number of
codes (``fixed_length``) and their ``(t, 1, n_q)`` grid, so generation knows where a span ends
and where each code sits. Without it the codes form a plain sequence (no grid).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

from anymodal.errors import MediaError
from anymodal.media.limits import MediaLimits
from anymodal.segments import Audio, Segment
from anymodal.tokenizers.base import ModalityTokenizer, TokenBlock
from anymodal.tokenizers.registry import register_tokenizer

SAMPLE_RATE = 24_000
STATE_FILE = "encodec.safetensors"
#: the official 24 kHz weights, as the encodec package names, downloads and caches them
OFFICIAL_FILE = "encodec_24khz-d7cc33bc.th"
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/encodec/v0/" + OFFICIAL_FILE
LAYOUTS = ("flatten", "delay")
_CACHE_SIZE = 256


# ---- code layouts (pure functions over (n_q, T) int64 matrices) ---------------------------------
def flatten_codes(codes: torch.Tensor, card: int) -> torch.Tensor:
    """(n_q, T) codes -> (T * n_q,) ids, frame-major; codebook k offset by ``k * card``."""
    n_q = codes.shape[0]
    off = torch.arange(n_q, device=codes.device)[:, None] * card
    return (codes + off).t().reshape(-1)


def unflatten_ids(ids: torch.Tensor, n_q: int, card: int) -> torch.Tensor:
    """Inverse of :func:`flatten_codes` (a trailing partial frame is dropped). The slot decides
    the codebook; ``id % card`` the code."""
    T = ids.numel() // n_q
    return (ids[:T * n_q].reshape(T, n_q) % card).t().contiguous()


def delay_codes(codes: torch.Tensor, card: int) -> torch.Tensor:
    """(n_q, T) -> ((T + n_q - 1) * n_q,) ids: codebook k delayed by k frames (MusicGen); the
    holes hold the pad id ``n_q * card``."""
    n_q, T = codes.shape
    pad = n_q * card
    d = torch.full((n_q, T + n_q - 1), pad, dtype=torch.long, device=codes.device)
    for k in range(n_q):
        d[k, k:k + T] = codes[k] + k * card
    return d.t().reshape(-1)


def undelay_ids(ids: torch.Tensor, n_q: int, card: int) -> torch.Tensor:
    """Inverse of :func:`delay_codes`. A frame whose slot holds the pad (or is missing at a
    truncated end) gets code 0 in that codebook."""
    S = ids.numel() // n_q
    T = max(0, S - (n_q - 1))
    d = ids[:S * n_q].reshape(S, n_q).t()  # (n_q, S)
    out = torch.zeros((n_q, T), dtype=torch.long, device=ids.device)
    for k in range(n_q):
        col = d[k, k:k + T]
        out[k, :col.numel()] = torch.where(col >= n_q * card, 0, col % card)
    return out


# ---- audio input --------------------------------------------------------------------------------
def _load_wave(segment: Segment, limits: MediaLimits) -> torch.Tensor:
    """Any audio segment (file, bytes, or a tensor with ``sample_rate=``) -> (samples,) float32
    mono at 24 kHz, through :func:`anymodal.media.audio.load_audio`."""
    from anymodal.media.audio import load_audio

    return load_audio(segment.data, segment.source, sample_rate=SAMPLE_RATE,
                      source_rate=segment.options.get("sample_rate"), limits=limits)


def _cache_key(segment: Segment):
    """Files are keyed by path, size and mtime (the synthetic suites share one WAV among many
    records, and encoding is the expensive part); tensors and bytes are not cached."""
    if isinstance(segment.data, (str, os.PathLike)) and os.path.isfile(segment.data):
        st = os.stat(segment.data)
        return (os.path.realpath(segment.data), st.st_size, st.st_mtime_ns, segment.options.get("sample_rate"))
    return None


# ---- the tokenizer ------------------------------------------------------------------------------
class EncodecAudioTokenizer(ModalityTokenizer):
    """EnCodec 24 kHz codes as ids. ``encode`` -> TokenBlock; ``decode`` -> (1, samples) waveform.

    Options: ``bandwidth`` (kbps: 1.5, 3, 6, 12, 24), ``layout`` (``flatten`` | ``delay``),
    ``seconds`` (fixed input length), ``checkpoint`` / ``path`` (weights; neither: the encodec
    package's cached official file), ``random_init`` and ``seed`` (random weights, asked for),
    ``cfg_dropout`` (conditioning dropout for classifier-free guidance, see
    :class:`anymodal.stream.StreamBuilder`), ``max_seconds`` (longest accepted input).
    """

    modality = "audio"
    kind = "discrete"
    bidirectional = False

    def __init__(self, checkpoint: str | None = None, path: str | None = None, bandwidth: float = 1.5,
                 layout: str = "flatten", seconds: float | None = None, random_init: bool = False, seed: int = 0,
                 cfg_dropout: float = 0.0, max_seconds: float = 60.0):
        try:
            from encodec import EncodecModel
        except ImportError as e:
            raise ImportError("audio.encodec needs the encodec package: pip install 'anymodal[codec]'") from e
        if layout not in LAYOUTS:
            raise ValueError(f"audio.encodec: layout must be one of {LAYOUTS}, got {layout!r}")
        if seconds is not None and not 0 < seconds <= max_seconds:
            raise ValueError(f"audio.encodec: seconds must be in (0, max_seconds={max_seconds}], got {seconds}")
        if not 0.0 <= cfg_dropout < 1.0:
            raise ValueError(f"audio.encodec: cfg_dropout must be in [0, 1), got {cfg_dropout}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = EncodecModel.encodec_model_24khz(pretrained=False)
        if float(bandwidth) not in model.target_bandwidths:
            raise ValueError(f"audio.encodec: bandwidth must be one of {model.target_bandwidths} kbps, got {bandwidth}")
        model.set_target_bandwidth(float(bandwidth))
        if (checkpoint or path) and random_init:
            raise ValueError("audio.encodec: give checkpoint=<file> (or path=<export folder>) or random_init=True, "
                             "not both")
        file = Path(path) / STATE_FILE if path else (Path(checkpoint) if checkpoint else None)
        if file is None and not random_init:
            file = official_weights()
            if file is None:
                raise ValueError(f"audio.encodec needs the official 24 kHz weights: checkpoint=<{OFFICIAL_FILE}> "
                                 f"(download {OFFICIAL_URL}, or cache it once with python -c 'from encodec import "
                                 f"EncodecModel; EncodecModel.encodec_model_24khz()', which puts it in "
                                 f"{_hub_checkpoints()}); random_init=True builds seeded random weights "
                                 "(tests; decodes to noise)")
        if file is not None:
            model.load_state_dict(_read_state(file))
        else:
            _random_codebooks(model, seed)
        self.model = model.eval().requires_grad_(False)
        self.pretrained = file is not None
        self.layout, self.seconds = layout, seconds
        self.limits = MediaLimits(max_seconds=max_seconds)
        self.bandwidth = float(bandwidth)
        self.n_q = model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, self.bandwidth)
        self.card = model.quantizer.bins  # 1024
        self.hop = int(math.prod(model.encoder.ratios))  # 320 samples per frame
        self.sample_rate = SAMPLE_RATE
        self.vocab_size = self.n_q * self.card + (1 if layout == "delay" else 0)
        self.pad_id = self.n_q * self.card if layout == "delay" else None
        self.cfg_dropout = float(cfg_dropout)
        self.fixed_length = self.fixed_grid = None
        if seconds is not None:
            T = self.frames(round(seconds * SAMPLE_RATE))
            steps = T + (self.n_q - 1 if layout == "delay" else 0)
            self.fixed_grid = (steps, 1, self.n_q)
            self.fixed_length = steps * self.n_q
        self._cache: OrderedDict = OrderedDict()

    def frames(self, samples: int) -> int:
        """Code frames for a waveform of ``samples`` samples (the encoder pads the last frame)."""
        return math.ceil(samples / self.hop)

    # ---- encode ---------------------------------------------------------------------------
    def _wave(self, segment: Segment) -> torch.Tensor:
        wave = _load_wave(segment, self.limits)
        if wave.numel() == 0:
            raise MediaError(segment.source, "empty audio (0 samples)")
        if self.seconds is not None:
            n = round(self.seconds * SAMPLE_RATE)
            wave = F.pad(wave, (0, max(0, n - wave.numel())))[:n]
        return wave

    @torch.no_grad()
    def codes(self, segment: Segment) -> torch.Tensor:
        """(n_q, T) int64 codes of a segment (cached for files)."""
        key = _cache_key(segment)
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        frames = self.model.encode(self._wave(segment)[None, None])  # [(codes (1, n_q, T), scale)]
        codes = torch.cat([c for c, _ in frames], dim=-1)[0]
        if key is not None:
            self._cache[key] = codes
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return codes

    def layout_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """(n_q, T) codes -> (N,) ids in this tokenizer's layout."""
        return flatten_codes(codes, self.card) if self.layout == "flatten" else delay_codes(codes, self.card)

    def layout_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) ids -> (n_q, T) codes (inverse of :meth:`layout_ids`)."""
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        if self.layout == "flatten":
            return unflatten_ids(ids, self.n_q, self.card)
        return undelay_ids(ids, self.n_q, self.card)

    def encode(self, segment: Segment) -> TokenBlock:
        ids = self.layout_ids(self.codes(segment))
        return TokenBlock(ids=ids, grid=self.fixed_grid)

    def num_tokens(self, segment: Segment) -> int:
        if self.fixed_length is not None:
            return self.fixed_length
        from anymodal.media.audio import audio_info, expected_samples

        info = audio_info(segment.data, segment.source, limits=self.limits,
                          source_rate=segment.options.get("sample_rate"))
        T = self.frames(expected_samples(info, SAMPLE_RATE))
        return (T + (self.n_q - 1 if self.layout == "delay" else 0)) * self.n_q

    # ---- generation -----------------------------------------------------------------------
    def allowed_range(self, n: int) -> tuple[int, int]:
        """[lo, hi) of the local ids the ``n``-th token of a span may take: its codebook's range,
        or only the pad where the delay pattern has a hole (the first frames of the later
        codebooks, and, with ``seconds``, the last ones of the earlier codebooks)."""
        s, k = divmod(n, self.n_q)
        if self.layout == "delay":
            T = self.fixed_grid[0] - (self.n_q - 1) if self.fixed_grid is not None else None
            if s < k or (T is not None and s - k >= T):
                return self.pad_id, self.pad_id + 1
        return k * self.card, (k + 1) * self.card

    # ---- decode ---------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, ids) -> torch.Tensor:
        """(N,) ids -> (1, samples) float32 waveform at 24 kHz (``T * 320`` samples)."""
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"audio.encodec: ids must lie in [0, {self.vocab_size})")
        codes = self.layout_codes(ids)
        if codes.shape[1] == 0:
            return torch.zeros(1, 0)
        wave = self.model.decode([(codes[None], None)])  # (1, 1, samples)
        return wave[0].clamp(-1, 1)

    def make_segment(self, decoded: torch.Tensor) -> Segment:
        return Audio(decoded, tokenizer=self.name, sample_rate=SAMPLE_RATE)

    def state_files(self) -> dict[str, bytes]:
        """Trained weights travel with an export (safetensors); a random init is rebuilt from its seed."""
        if not self.pretrained:
            return {}
        from safetensors.torch import save

        return {STATE_FILE: save({k: v.detach().contiguous() for k, v in self.model.state_dict().items()})}


def _hub_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def official_weights() -> Path | None:
    """The official 24 kHz weights in the encodec package's cache (torch hub), or None.

    >>> official_weights()  # doctest: +SKIP
    PosixPath('/root/.cache/torch/hub/checkpoints/encodec_24khz-d7cc33bc.th')
    """
    file = _hub_checkpoints() / OFFICIAL_FILE
    return file if file.is_file() else None


def _read_state(file: Path) -> dict:
    if not file.is_file():
        raise FileNotFoundError(f"audio.encodec: checkpoint not found: {file} (the official weights: {OFFICIAL_URL})")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle payloads and foreign objects are refused
        raise ValueError(f"audio.encodec: refused to load {file} (only plain tensors are allowed): {e}") from None
    if not isinstance(state, dict) or not any(k.startswith("quantizer.") for k in state):
        raise ValueError(f"audio.encodec: {file} is not an EnCodec state dict (official format: "
                         "encodec_24khz-*.th)")
    return state


@torch.no_grad()
def _random_codebooks(model, seed: int) -> None:
    """Codebook k: 1024 draws from a diagonal Gaussian fitted to what reaches it (the encoder
    output, then the residual after codebooks < k) on a seeded 1 s probe of noise bursts and
    tones at rising loudness: entries then tile the region real frames fall in, so the nearest
    entry, and so the code, follows the waveform (random directions alone, or the package's
    zeros, give a handful of codes for any input)."""
    gen = torch.Generator().manual_seed(seed + 1)
    n = SAMPLE_RATE // 10
    t = torch.arange(n) / SAMPLE_RATE
    parts = []
    for i in range(10):  # 0.1 s each, loudness 0.02 .. 0.77
        amp = 0.02 * 1.5 ** i
        tone = torch.sin(2 * math.pi * (200 + 300 * i) * t)
        parts.append((tone if i % 2 else torch.randn(n, generator=gen)) * amp)
    residual = model.encoder(torch.cat(parts)[None, None])[0].t()  # (frames, D)
    for layer in model.quantizer.vq.layers:
        cb = layer._codebook
        mean, std = residual.mean(0), residual.std(0)
        embed = mean + std * torch.randn(cb.embed.shape, generator=gen)  # (1024, D)
        cb.embed.copy_(embed)
        cb.embed_avg.copy_(embed)
        cb.inited.fill_(1.0)
        residual = residual - embed[torch.cdist(residual, embed).argmin(-1)]


register_tokenizer("audio.encodec")(EncodecAudioTokenizer)
