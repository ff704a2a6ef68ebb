"""Staged training: named parameter groups, which of them train, per-group learning rates, and
loading the previous stage's weights.

The LLaVA recipe (Liu et al. 2023) trains in two stages: *alignment* trains only the new
projection from the vision encoder into the LM (the LM frozen) on captions; *instruction
tuning* then unfreezes the LM. Here the decoder's parameters fall into five named groups:

================  ===========================================================================
``embeddings``    ``embed.weight``: the input embedding table (all rows)
``new_tokens``    the rows of ``embed.weight`` and ``head.weight`` that are not text ids: media
                  ids, ``<bos> <eos> <pad>`` and begin/end markers (what an imported LM lacks)
``projectors``    ``input_proj.*`` (continuous vectors -> model width), ``resamplers.*`` and ``grid_embed``
``decoder``       ``blocks.*`` and the final ``norm``
``head``          ``head.weight``: the LM head (all rows)
================  ===========================================================================

``trainable: [projectors, new_tokens]`` is stage 1 (LLaVA's ``tune_mm_mlp_adapter``; with
``mm_use_im_start_end`` LLaVA also trains the new marker rows and restores the old ones, which is
what ``new_tokens`` does by zeroing the gradient of the text rows). ``[projectors, new_tokens,
decoder]`` is stage 2. ``None`` trains everything. Frozen parameters get ``requires_grad=False``
and stay out of the optimizer, so they stay bit-identical; a partly trained tensor
(``new_tokens`` without ``embeddings``/``head``) is never weight-decayed, so its frozen rows stay
bit-identical too.

The vision backbone of ``image.encoder`` is not among these: it lives in the tokenizer and is
always frozen.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch

log = logging.getLogger("anymodal")

GROUPS = ("embeddings", "new_tokens", "projectors", "decoder", "head")
_CKPT_PREFIX = "net.model."


def group_of(name: str) -> str:
    """The group of a decoder parameter name (``new_tokens`` is a row subset, never a whole name)."""
    if name.startswith("embed."):
        return "embeddings"
    if name.startswith("head."):
        return "head"
    if name.startswith(("input_proj.", "resamplers.")) or name == "grid_embed":  # resamplers: media -> decoder too
        return "projectors"
    if name.startswith(("blocks.", "norm.")):
        return "decoder"
    raise ValueError(f"parameter {name!r} belongs to no group of {GROUPS}; add it to anymodal.pretrained.stages")


class TrainableGroups:
    """Applies ``trainable`` to an :class:`anymodal.AnyModal` (``requires_grad`` and row masks)
    and builds the optimizer's parameter groups.

    >>> groups = TrainableGroups(net, ["projectors", "new_tokens"])  # doctest: +SKIP
    >>> torch.optim.AdamW(groups.optimizer_groups(lr=1e-3, weight_decay=0.1))  # doctest: +SKIP
    """

    def __init__(self, net, trainable: Sequence[str] | None = None, group_lr: dict[str, float] | None = None):
        names = list(GROUPS) if trainable is None else list(trainable)
        unknown = sorted(set(names) - set(GROUPS))
        if unknown:
            raise ValueError(f"trainable names unknown groups {unknown}; groups: {list(GROUPS)}")
        if not names:
            raise ValueError(f"trainable is empty: nothing would train (groups: {list(GROUPS)})")
        self.trainable = names
        self.group_lr = dict(group_lr or {})
        bad = sorted(set(self.group_lr) - set(GROUPS))
        if bad:
            raise ValueError(f"group_lr names unknown groups {bad}; groups: {list(GROUPS)}")
        frozen_lr = sorted(set(self.group_lr) - set(names))
        if frozen_lr:
            raise ValueError(f"group_lr sets a learning rate for {frozen_lr}, which do not train (trainable: {names})")
        self.n_text = net.vocab.text.vocab_size if net.vocab.text.kind == "discrete" else 0
        model = net.model
        #: parameter name -> the group it trains under (absent: frozen)
        self.group: dict[str, str] = {}
        #: parameter names of which only the new_tokens rows train
        self.row_masked: set[str] = set()
        self._hooks = []
        tied = model.cfg.tie_embeddings
        for name, p in model.named_parameters():  # a tied head is listed once, as embed.weight
            g = group_of(name)
            whole = g in names or (tied and g == "embeddings" and "head" in names)
            if whole:
                self.group[name] = g
            elif g in ("embeddings", "head") and "new_tokens" in names:
                self.group[name] = "new_tokens"
                self.row_masked.add(name)
                self._hooks.append(p.register_hook(self._rows_hook))
            p.requires_grad_(name in self.group)

    def _rows_hook(self, grad: torch.Tensor) -> torch.Tensor:
        # (V, D): the text rows [0, n_text) keep their pretrained values
        return torch.cat([torch.zeros_like(grad[:self.n_text]), grad[self.n_text:]])

    def remove(self) -> None:
        """Drop the row-mask hooks (the parameters keep their ``requires_grad``)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def optimizer_groups(self, model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: per trained group, matrices with decay and the rest without
        (norms, biases, embeddings, and row-masked tensors, whose frozen rows decay would move).
        Each carries ``name`` (e.g. ``decoder/decay``) and its ``lr`` (``group_lr`` or ``lr``)."""
        out: dict[str, dict] = {}
        for name, p in model.named_parameters():
            g = self.group.get(name)
            if g is None:
                continue
            decay = p.dim() == 2 and "embed" not in name and name not in self.row_masked
            key = f"{g}/{'decay' if decay else 'no_decay'}"
            if key not in out:
                out[key] = {"name": key, "params": [], "weight_decay": weight_decay if decay else 0.0,
                            "lr": self.group_lr.get(g, lr)}
            out[key]["params"].append(p)
        return list(out.values())

    def counts(self, model: torch.nn.Module) -> dict[str, int]:
        """Trained parameter count per group (row-masked tensors count their trained rows)."""
        out: dict[str, int] = {}
        for name, p in model.named_parameters():
            g = self.group.get(name)
            if g is not None:
                n = (p.shape[0] - self.n_text) * p.shape[1] if name in self.row_masked else p.numel()
                out[g] = out.get(g, 0) + n
        return out


# ---- weights of a previous stage ------------------------------------------------------------------
def read_weights(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta, decoder state dict) of an export folder or an anymodal Lightning ``.ckpt``
    (``torch.load(weights_only=True)``). Weights only: no optimizer state, no step."""
    from anymodal.api import CONFIG_FILE, WEIGHTS_FILE

    p = Path(path)
    if p.is_dir():
        from safetensors.torch import load_file

        if not (p / CONFIG_FILE).is_file() or not (p / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{p}: not an anymodal export folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        meta = json.loads((p / CONFIG_FILE).read_text())
        if meta.get("format") != "anymodal":
            raise ValueError(f"{p / CONFIG_FILE}: not an anymodal config")
        state = load_file(str(p / WEIGHTS_FILE))
        if meta["model"].get("tie_embeddings"):
            state["head.weight"] = state["embed.weight"]
        return meta, state
    if p.suffix == ".ckpt" and p.is_file():
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickle payloads and foreign objects refused
            raise ValueError(f"{p}: refused to load (only plain tensors and data are allowed): {e}") from None
        if "anymodal" not in ckpt:
            raise ValueError(f"{p}: not an anymodal checkpoint (no 'anymodal' entry)")
        state = {k[len(_CKPT_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(_CKPT_PREFIX)}
        return ckpt["anymodal"], state
    raise FileNotFoundError(f"{p}: neither an anymodal export folder nor a .ckpt file")


def load_weights(net, path: str | os.PathLike) -> None:
    """Load a previous stage's decoder weights into ``net`` (an :class:`anymodal.AnyModal`),
    strictly: the same vocabulary (tokenizers, order, sizes) and every tensor's name and shape."""
    meta, state = read_weights(path)
    saved = meta.get("vocabulary")
    mine = json.loads(json.dumps(net.vocab.to_dict()))
    if saved is not None and saved != mine:
        raise ValueError(f"init_from {path}: its vocabulary differs from this model's (saved tokenizers "
                         f"{saved.get('tokenizers')}, size {saved.get('size')}; this model: {mine['tokenizers']}, "
                         f"size {mine['size']})")
    # the same options (paths aside) rebuild the same tokenizers, e.g. the same frozen backbone
    # that stage 1's projector was trained on; a difference is allowed (moved weights) but named
    saved_specs = {s["name"]: {k: v for k, v in s.items() if k != "path"} for s in meta.get("tokenizers", [])}
    for spec in net.tokenizer_specs:
        old = saved_specs.get(spec["name"])
        new = {k: v for k, v in spec.items() if k != "path"}
        if old is not None and old != new:
            log.warning("anymodal: init_from %s: tokenizer %s had options %s there, %s here", path, spec["name"],
                        old, new)
    own = net.model.state_dict()
    problems = [f"{k}: missing in {path}" for k in own if k not in state]
    problems += [f"{k}: not in this model" for k in state if k not in own]
    problems += [f"{k}: shape {tuple(state[k].shape)} in {path}, {tuple(v.shape)} here"
                 for k, v in own.items() if k in state and state[k].shape != v.shape]
    if problems:
        more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
        raise ValueError(f"init_from {path} does not fit this model: {'; '.join(problems[:6])}{more}")
    net.model.load_state_dict(state, strict=True)
