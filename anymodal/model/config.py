"""Model configuration (a typed dataclass, validated on creation) and named size presets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

ATTENTION_BACKENDS = ("auto", "eager", "sdpa", "varlen", "flex", "xformers")
PROJECTORS = ("linear", "mlp2")
#: supported ``rope_scaling`` types and the keys each needs (Hugging Face names)
ROPE_SCALING = {"linear": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


@dataclass
class ModelConfig:
    """Decoder shape and behaviour. ``vocab_size`` and ``continuous_inputs`` are filled in from
    the tokenizers by :class:`anymodal.AnyModal`; everything else has a default.

    - ``rope``: ``"mrope"`` (3D rotary over (t, h, w), Qwen2-VL) or ``"rope"`` (1D over the index
      in the sample). On text-only input the two are identical.
    - ``qk_norm``: RMSNorm on queries and keys (Chameleon: early fusion diverges without it).
    - ``media_pos_embed``: learned embeddings of a media token's (t, h, w) inside its span, added
      at the input (factorised, NaViT); ``max_grid`` bounds each coordinate.
    - ``z_loss``: weight of ``logsumexp(logits)**2`` (PaLM, Chameleon) to keep logits bounded.
    - ``attention``: backend name, see :mod:`anymodal.model.attention`: ``auto`` (``varlen``:
      measured fastest on CPU for packed training and for inference, benchmarks/RESULTS.md),
      ``eager``, ``sdpa``, ``varlen``, ``flex`` (inference only on CPU), ``xformers`` (CUDA only).
    - ``qkv_bias``: biases on the q, k and v projections (Qwen2); off by default (Llama).
    - ``rope_scaling``: Hugging Face-style rotary frequency scaling of an imported LM, ``None``
      (plain), ``{"rope_type": "linear", "factor": f}`` or ``{"rope_type": "llama3", "factor",
      "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}`` (Llama 3.1).
    - ``projectors``: continuous tokenizer name -> ``"linear"`` (default, Fuyu) or ``"mlp2"``
      (Linear-GELU-Linear, LLaVA-1.5) for the input projection of its vectors.
    - ``max_seq_len``: the longest stream (prompt + generated tokens) the model serves; generation
      caps ``max_new_tokens`` by it and refuses a longer prompt, so one request's memory is bounded.
    - ``chat_template``: conversation turns (:mod:`anymodal.chat`): ``None`` (off; the vocabulary is
      unchanged), ``"default"`` (role tokens added to the vocabulary), or a Hugging Face chat LM's
      text markers, ``"chatml"`` (Qwen2) or ``"llama3"`` (:data:`anymodal.stream.CHAT_TEMPLATES`).
    - ``resamplers``: continuous tokenizer name -> its learned-query resampler (``{"queries", "init",
      "layers", "heads"}``, :mod:`anymodal.model.resampler`); filled in from the tokenizer specs'
      ``resample:`` options by :class:`anymodal.AnyModal`, like ``continuous_inputs``.
    """

    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    hidden_dim: int | None = None
    norm_eps: float = 1e-5
    rope: str = "mrope"
    rope_theta: float = 10000.0
    mrope_sections: list[int] | None = None
    qk_norm: bool = True
    media_pos_embed: bool = True
    max_grid: int = 64
    z_loss: float = 0.0
    attention: str = "auto"
    tie_embeddings: bool = False
    qkv_bias: bool = False
    rope_scaling: dict[str, float | str] | None = None
    projectors: dict[str, str] = field(default_factory=dict)
    init_std: float = 0.02
    max_seq_len: int = 4096
    chat_template: str | None = None
    vocab_size: int = 0
    continuous_inputs: dict[str, int] = field(default_factory=dict)
    resamplers: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary positions")
        if self.hidden_dim is None:  # SwiGLU: 8/3 * dim, rounded up to a multiple of 32 (Llama)
            self.hidden_dim = 32 * ((int(8 * self.dim / 3) + 31) // 32)
        if self.rope not in ("rope", "mrope"):
            raise ValueError(f"rope must be 'rope' or 'mrope', got {self.rope!r}")
        if self.mrope_sections is None:  # Qwen2-VL splits 64 pairs as 16/24/24: t gets 1/4, h and w 3/8
            half = self.head_dim // 2
            t = half // 4
            h = (half - t) // 2
            self.mrope_sections = [t, h, half - t - h]
        if sum(self.mrope_sections) != self.head_dim // 2 or len(self.mrope_sections) != 3:
            raise ValueError(f"mrope_sections {self.mrope_sections} must be 3 numbers summing to "
                             f"head_dim/2 = {self.head_dim // 2}")
        if isinstance(self.max_seq_len, bool) or not isinstance(self.max_seq_len, int) or self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be an int >= 2 (prompt + generated tokens), got {self.max_seq_len!r}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        self.mrope_sections = list(self.mrope_sections)
        self.continuous_inputs = dict(self.continuous_inputs)
        self.projectors = dict(self.projectors)
        if self.resamplers:
            from anymodal.model.resampler import resample_config  # torch: only when a model has one

            self.resamplers = {k: resample_config(k, v) for k, v in self.resamplers.items()}
            for k, r in self.resamplers.items():
                if r["queries"] > self.max_grid and self.media_pos_embed:
                    raise ValueError(f"tokenizer {k!r}: resample.queries={r['queries']} > model.arch.max_grid="
                                     f"{self.max_grid} (query k gets the learned media position (k, 0, 0)); "
                                     f"raise max_grid or use fewer queries")
                if self.dim % (r["heads"] or self.n_heads):
                    raise ValueError(f"tokenizer {k!r}: resample.heads={r['heads']} does not divide dim={self.dim}")
        bad = {k: v for k, v in self.projectors.items() if v not in PROJECTORS}
        if bad:
            raise ValueError(f"projectors {bad}: each must be one of {PROJECTORS}")
        if self.rope_scaling is not None:
            self.rope_scaling = dict(self.rope_scaling)
            kind = self.rope_scaling.get("rope_type")
            need = ROPE_SCALING.get(kind)
            if need is None:
                raise ValueError(f"rope_scaling rope_type {kind!r} is not supported; supported: {sorted(ROPE_SCALING)}")
            missing = [k for k in need if k not in self.rope_scaling]
            if missing:
                raise ValueError(f"rope_scaling ({kind}) lacks {missing}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def num_params(self) -> int:
        """Parameters of the decoder (embedding and head included), without building it."""
        d, L, V = self.dim, self.n_layers, self.vocab_size
        kv = self.n_kv_heads * self.head_dim
        attn = d * d * 2 + d * kv * 2
        mlp = 3 * d * self.hidden_dim
        bias = d + 2 * kv if self.qkv_bias else 0
        per_layer = attn + mlp + 2 * d + (2 * self.head_dim if self.qk_norm else 0) + bias
        head = 0 if self.tie_embeddings else V * d
        proj = sum(n * d + d + (d * d + d if self.projectors.get(k) == "mlp2" else 0)
                   for k, n in self.continuous_inputs.items())
        grid = 3 * self.max_grid * d if self.media_pos_embed else 0
        resample = 0
        if self.resamplers:
            from anymodal.model.resampler import resampler_num_params

            resample = sum(resampler_num_params(d, r, self.max_grid) for r in self.resamplers.values())
        return V * d + L * per_layer + d + head + proj + grid + resample


def debug(**kw) -> ModelConfig:
    """Smallest useful shape: unit tests."""
    return replace(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2), **kw)


def tiny(**kw) -> ModelConfig:
    """~1M parameters: the CPU demo."""
    return replace(ModelConfig(dim=128, n_layers=4, n_heads=4, n_kv_heads=2), **kw)


def small(**kw) -> ModelConfig:
    """~10M parameters: CPU benchmarks."""
    return replace(ModelConfig(dim=384, n_layers=6, n_heads=6, n_kv_heads=2), **kw)


def base(**kw) -> ModelConfig:
    """~100M parameters: a single GPU."""
    return replace(ModelConfig(dim=768, n_layers=12, n_heads=12, n_kv_heads=4), **kw)


PRESETS = {"debug": debug, "tiny": tiny, "small": small, "base": base}


def preset(name: str, **kw) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name](**kw)
