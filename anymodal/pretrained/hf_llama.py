"""Import a Hugging Face Llama-family text LM (Llama, Mistral, Qwen2) into the anymodal decoder.

The usual multimodal recipe (LLaVA, Liu et al. 2023) starts from a pretrained LM. This module
reads a local checkpoint folder — ``config.json``, ``model.safetensors`` or sharded
``model-0000k-of-0000n.safetensors`` with ``model.safetensors.index.json``, and the LM's
``tokenizer.json`` — and copies it into :class:`anymodal.model.AnyModalTransformer`:

- The shapes map one to one: pre-norm RMSNorm, rotate-half RoPE (M-RoPE on text is the same
  rotation, so ``rope="mrope"`` keeps the LM's text behaviour), grouped-query attention (with
  q/k/v biases for Qwen2, ``qkv_bias``), SwiGLU (``gate/up/down`` -> ``w1/w3/w2``), no QK-norm,
  tied or separate LM head.
- The unified vocabulary (:class:`anymodal.stream.Vocabulary`) puts the text ids first, so the
  LM's ids keep their rows. Rows the tokenizer never emits (the padding rows some LMs round their
  embedding up with, e.g. Qwen2) are dropped; the rows anymodal adds (discrete media ids,
  ``<bos> <eos> <pad>``, begin/end markers) start at the mean of the LM's rows (Hewitt 2021,
  "Initializing new word embeddings"), except ``<bos>`` and ``<eos>``, which copy the LM's own
  BOS/EOS rows when it has them, so the LM reads a familiar start of text.
- Refused with a clear error: other architectures, non-SiLU MLPs, a ``head_dim`` that differs from
  ``hidden_size / num_attention_heads``, attention output or MLP biases, sliding-window
  attention, partial rotary, and rope scalings other than ``linear`` and ``llama3``
  (``dynamic``, ``yarn``, ``longrope`` change attention with the sequence length).
- Only safetensors files are read (no pickle); weights are cast to float32.

Example::

    from anymodal.pretrained import from_hf
    model = from_hf("checkpoints/qwen2-0.5b", tokenizers=[{"name": "image.patch", "patch_size": 14}])
    model.generate(["Describe", am.Image("a.png")])

In a recipe, ``model.init_from_hf: checkpoints/qwen2-0.5b`` does the same (see
``recipes/stage1-align.yaml``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from anymodal.model.config import ModelConfig

log = logging.getLogger("anymodal")

SUPPORTED = ("llama", "mistral", "qwen2")
CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
#: ModelConfig fields an imported LM decides (the recipe's ``arch`` sets the rest)
LM_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "norm_eps", "rope_theta", "rope_scaling",
             "qkv_bias", "qk_norm", "tie_embeddings")
#: anymodal parameter name <- HF name, per layer (``{i}`` is the layer index)
_LAYER_KEYS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w3.weight": "mlp.up_proj.weight",
    "mlp.w2.weight": "mlp.down_proj.weight",
}
_BIAS_KEYS = {"attn.wq.bias": "self_attn.q_proj.bias", "attn.wk.bias": "self_attn.k_proj.bias",
              "attn.wv.bias": "self_attn.v_proj.bias"}
#: HF buffers some old checkpoints saved; recomputed here, so skipped
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ---- config ---------------------------------------------------------------------------------------
def read_hf_config(path: str | os.PathLike) -> dict:
    """The ``config.json`` of a checkpoint folder, as a dict."""
    p = Path(path)
    f = p / CONFIG_FILE
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: not a folder (expected a Hugging Face checkpoint folder with {CONFIG_FILE})")
    if not f.is_file():
        raise FileNotFoundError(f"{p}: no {CONFIG_FILE}; is this a Hugging Face checkpoint folder?")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _rope(hf: dict, where: str) -> tuple[float, dict | None]:
    """(rope_theta, anymodal rope_scaling) from either config layout: transformers >= 5 writes
    ``rope_parameters`` (theta inside), older ones ``rope_theta`` + ``rope_scaling``."""
    params = dict(hf.get("rope_parameters") or {})
    theta = float(hf.get("rope_theta") or params.pop("rope_theta", None) or 10000.0)
    params.pop("rope_theta", None)
    scaling = dict(hf.get("rope_scaling") or params)
    kind = scaling.pop("rope_type", scaling.pop("type", None))
    if kind in (None, "default"):
        return theta, None
    if kind == "linear":
        return theta, {"rope_type": "linear", "factor": float(scaling["factor"])}
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        missing = [k for k in keys if k not in scaling]
        if missing:
            raise ValueError(f"{where}: llama3 rope scaling lacks {missing}")
        return theta, {"rope_type": "llama3", **{k: float(scaling[k]) for k in keys}}
    raise ValueError(f"{where}: rope scaling {kind!r} is not supported (supported: default, linear, llama3)")


def hf_model_config(path: str | os.PathLike, base: ModelConfig | None = None) -> ModelConfig:
    """A :class:`ModelConfig` with the LM's shape (:data:`LM_FIELDS`) and everything else from
    ``base`` (rope kind, media positions, projectors, attention backend...).

    Raises ``ValueError`` naming the folder and the reason for what the decoder cannot represent.
    """
    hf = read_hf_config(path)
    where = f"{path}/{CONFIG_FILE}"
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise ValueError(f"{where}: model_type {kind!r} is not supported (supported: {', '.join(SUPPORTED)})")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{where}: hidden_act {act!r} is not supported (the decoder's MLP is SwiGLU: silu)")
    try:
        D, H, L = int(hf["hidden_size"]), int(hf["num_attention_heads"]), int(hf["num_hidden_layers"])
        hidden = int(hf["intermediate_size"])
    except KeyError as e:
        raise ValueError(f"{where}: missing {e.args[0]!r}") from None
    if D % H:
        raise ValueError(f"{where}: hidden_size {D} is not divisible by num_attention_heads {H}")
    head_dim = hf.get("head_dim")
    if head_dim is not None and int(head_dim) != D // H:
        raise ValueError(f"{where}: head_dim {head_dim} differs from hidden_size / num_attention_heads = {D // H}; "
                         "the decoder derives head_dim from dim and n_heads")
    if hf.get("attention_bias"):
        raise ValueError(f"{where}: attention_bias=true (biases on q/k/v *and* o_proj) is not supported; "
                         "only q/k/v biases (Qwen2) are")
    if hf.get("mlp_bias"):
        raise ValueError(f"{where}: mlp_bias=true is not supported")
    if hf.get("use_sliding_window") or (kind == "mistral" and hf.get("sliding_window") is not None):
        raise ValueError(f"{where}: sliding-window attention is not supported")
    layer_types = hf.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise ValueError(f"{where}: layer_types {sorted(set(layer_types))}: only full attention is supported")
    if float(hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError(f"{where}: partial rotary embeddings are not supported")
    theta, scaling = _rope(hf, where)
    base = base or ModelConfig()
    head_dim = D // H
    sections = base.mrope_sections if sum(base.mrope_sections or []) == head_dim // 2 else None
    return replace(base, dim=D, n_layers=L, n_heads=H, n_kv_heads=int(hf.get("num_key_value_heads") or H),
                   hidden_dim=hidden, norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=theta,
                   rope_scaling=scaling, qkv_bias=kind == "qwen2", qk_norm=False,
                   tie_embeddings=bool(hf.get("tie_word_embeddings", False)), mrope_sections=sections)


def check_lm_config(cfg: ModelConfig, path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming the first field where ``cfg`` cannot hold the LM at ``path``."""
    want = hf_model_config(path, cfg)
    for name in LM_FIELDS:
        if getattr(cfg, name) != getattr(want, name):
            raise ValueError(f"model config {name}={getattr(cfg, name)!r} but the LM at {path} needs "
                             f"{getattr(want, name)!r} (build the config with hf_model_config)")


# ---- weights --------------------------------------------------------------------------------------
def hf_weight_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint folder (one file, or the shards its index lists)."""
    p = Path(path)
    if (p / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((p / INDEX_FILE).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{p / INDEX_FILE}: not a safetensors index ({e})") from None
        files = [p / f for f in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{p / INDEX_FILE} lists shards that are missing: {missing}")
        return files
    if (p / SINGLE_FILE).is_file():
        return [p / SINGLE_FILE]
    if any(p.glob("pytorch_model*.bin")):
        raise ValueError(f"{p}: only pickle weights (pytorch_model*.bin) found; anymodal reads safetensors only. "
                         "Convert with model.save_pretrained(dir, safe_serialization=True)")
    raise FileNotFoundError(f"{p}: no {SINGLE_FILE} or {INDEX_FILE}")


def load_hf_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, float32, keyed by HF name without the ``model.`` prefix
    (``lm_head.weight`` keeps its name)."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    for f in hf_weight_files(path):
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            for k in sf.keys():
                name = k[len("model."):] if k.startswith("model.") else k
                out[name] = sf.get_tensor(k).float()
    return out


def _text_rows(cfg_hf: dict, n_text: int, where: str) -> None:
    v = int(cfg_hf.get("vocab_size", 0))
    if n_text > v:
        raise ValueError(f"{where}: the tokenizer has {n_text} ids but the LM's vocab_size is {v}")


def _special_id(cfg_hf: dict, key: str, n_text: int) -> int | None:
    v = cfg_hf.get(key)
    if isinstance(v, list):  # Llama 3 lists several EOS ids; the first is end-of-text
        v = v[0] if v else None
    return int(v) if v is not None and 0 <= int(v) < n_text else None


def _grow(rows: torch.Tensor, n_text: int, size: int, copy: dict[int, int]) -> torch.Tensor:
    """(V_lm, D) LM rows -> (size, D): text rows kept, the rest the mean of the text rows, and
    ``copy`` (new row -> LM row) for <bos>/<eos>."""
    text = rows[:n_text]
    out = text.mean(0, keepdim=True).expand(size, -1).clone()
    out[:n_text] = text
    for new, old in copy.items():
        out[new] = text[old]
    return out


def load_hf_weights(model, path: str | os.PathLike) -> dict:
    """Copy the LM at ``path`` into ``model`` (an :class:`anymodal.AnyModal` whose config has the
    LM's shape, see :func:`hf_model_config`, and whose text tokenizer is that LM's ``text.hf``).

    Returns a report: ``{"lm_rows", "text_rows", "new_rows", "kept_new": [parameter names the LM
    does not have, e.g. input projections]}``.
    """
    path = Path(path)
    cfg = model.config
    check_lm_config(cfg, path)
    hf = read_hf_config(path)
    vocab = model.vocab
    if vocab.text.name != "text.hf":
        raise ValueError(f"an imported LM needs its own tokenizer (text.hf from {path}), not {vocab.text.name!r}")
    n_text = vocab.text.vocab_size
    _text_rows(hf, n_text, str(path))
    state = load_hf_state_dict(path)
    new: dict[str, torch.Tensor] = {}
    used = set()

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise ValueError(f"{path}: the checkpoint has no tensor {key!r}")
        used.add(key)
        return state[key]

    for i in range(cfg.n_layers):
        for ours, theirs in _LAYER_KEYS.items():
            new[f"blocks.{i}.{ours}"] = take(f"layers.{i}.{theirs}")
        if cfg.qkv_bias:
            for ours, theirs in _BIAS_KEYS.items():
                new[f"blocks.{i}.{ours}"] = take(f"layers.{i}.{theirs}")
    new["norm.weight"] = take("norm.weight")
    copy = {}
    for ours, key in ((vocab.bos, "bos_token_id"), (vocab.eos, "eos_token_id")):
        lm_id = _special_id(hf, key, n_text)
        if lm_id is not None:
            copy[ours] = lm_id
    new["embed.weight"] = _grow(take("embed_tokens.weight"), n_text, cfg.vocab_size, copy)
    if cfg.tie_embeddings:
        used.add("lm_head.weight")  # some tied checkpoints still save it: the same tensor
    else:
        if "lm_head.weight" not in state:
            raise ValueError(f"{path}: no lm_head.weight and tie_word_embeddings is false (a base model "
                             "without its LM head?)")
        new["head.weight"] = _grow(take("lm_head.weight"), n_text, cfg.vocab_size, copy)
    unused = sorted(k for k in set(state) - used if not k.endswith(_IGNORED_SUFFIXES))
    if unused:
        raise ValueError(f"{path}: tensors the decoder has no place for: {unused[:6]}"
                         f"{' ...' if len(unused) > 6 else ''}")
    own = model.model.state_dict()
    for k, v in new.items():
        if k not in own:
            raise ValueError(f"internal: no parameter {k!r} in the decoder")
        if own[k].shape != v.shape:
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)} in the LM but {tuple(own[k].shape)} in the "
                             "decoder")
    missing, unexpected = model.model.load_state_dict(new, strict=False)
    kept = sorted(k for k in missing if not (cfg.tie_embeddings and k == "head.weight"))
    assert not unexpected, unexpected
    report = {"lm_rows": int(hf.get("vocab_size", 0)), "text_rows": n_text, "new_rows": cfg.vocab_size - n_text,
              "kept_new": kept}
    log.info("anymodal: imported %s (%d text rows, %d new rows; new parameters: %s)", path, n_text,
             report["new_rows"], ", ".join(kept) or "none")
    return report


# ---- one call -------------------------------------------------------------------------------------
def lm_tokenizer_specs(path: str | os.PathLike, tokenizers: Sequence[dict | str] = ()) -> list[dict]:
    """``tokenizers`` with the LM's ``text.hf`` first (added when absent, its ``path`` filled in when
    left out). Another text tokenizer, or a ``text.hf`` file that differs from the LM's, is refused:
    the LM's rows mean its own tokenizer's ids."""
    from anymodal.tokenizers import get_tokenizer_class

    lm_file = Path(path).resolve() / TOKENIZER_FILE
    if not lm_file.is_file():
        raise FileNotFoundError(f"{path}: no {TOKENIZER_FILE} beside the LM (text.hf reads it)")
    out, text = [], None
    for spec in tokenizers:
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        if get_tokenizer_class(spec["name"]).modality == "text":
            if spec["name"] != "text.hf":
                raise ValueError(f"an imported LM reads its own tokenizer (text.hf from {path}); remove "
                                 f"{spec['name']!r} from the tokenizers (list only the media tokenizers; "
                                 "text.bytes is also the default when none are listed)")
            given = spec.get("path")
            if given is not None:
                f = Path(given) / TOKENIZER_FILE if Path(given).is_dir() else Path(given)
                if not f.is_file() or f.read_bytes() != lm_file.read_bytes():
                    raise ValueError(f"text.hf path {given} is not the LM's tokenizer ({lm_file})")
            spec["path"] = str(lm_file.parent)  # absolute: a checkpoint's config works from any folder
            text = spec
            continue
        out.append(spec)
    return [text or {"name": "text.hf", "path": str(lm_file.parent)}] + out


def from_hf(path: str | os.PathLike, tokenizers: Sequence[dict | str] = (), arch: ModelConfig | None = None,
            loss_weights: dict[str, float] | None = None):
    """An :class:`anymodal.AnyModal` holding the Hugging Face LM at ``path`` (a local folder).

    ``tokenizers``: the media tokenizers to add (the LM's ``text.hf`` is put first);
    ``arch``: the non-LM settings (``rope``, ``media_pos_embed``, ``projectors``...).

    >>> model = from_hf("qwen2-tiny", [{"name": "image.patch", "patch_size": 8}])  # doctest: +SKIP
    """
    from anymodal.api import AnyModal

    cfg = hf_model_config(path, arch)
    model = AnyModal(lm_tokenizer_specs(path, tokenizers), cfg, loss_weights)
    load_hf_weights(model, path)
    return model
