"""``AnyModal``: tokenizers + vocabulary + decoder in one object you can train, save, load and
generate with.

    model = am.AnyModal.load("runs/demo/export")
    out = model.generate(["What shape is it?", am.Image("a.png")], max_new_tokens=16)
    out.text, out.segments
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from anymodal.generate import GenerationOutput, generate
from anymodal.model import AnyModalTransformer, ModelConfig
from anymodal.packing import Batch, pack, pad
from anymodal.stream import StreamBuilder, build_tokenizers

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1

__all__ = ["AnyModal", "GenerationOutput"]


def _spec(spec: dict | str) -> dict:
    return {"name": spec} if isinstance(spec, str) else dict(spec)


class AnyModal(nn.Module):
    """An early-fusion model: ``tokenizers`` (specs, in order) fix the unified vocabulary;
    ``config`` the decoder shape (its ``vocab_size`` and ``continuous_inputs`` are derived).

    >>> model = AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8}], debug())
    """

    def __init__(self, tokenizers: Sequence[dict | str], config: ModelConfig | None = None,
                 loss_weights: dict[str, float] | None = None):
        super().__init__()
        self.tokenizer_specs = [_spec(s) for s in tokenizers]
        self.builder = StreamBuilder(build_tokenizers(self.tokenizer_specs), loss_weights)
        vocab = self.builder.vocab
        cfg = ModelConfig(**asdict(config)) if config is not None else ModelConfig()
        cfg.vocab_size = vocab.size
        cfg.continuous_inputs = {t.name: t.input_dim for t in vocab.tokenizers if t.kind == "continuous"}
        self.config = cfg
        self.model = AnyModalTransformer(
            cfg, {t.name: vocab.index[t.name] for t in vocab.tokenizers if t.kind == "continuous"})

    # ---- data --------------------------------------------------------------------------------
    @property
    def vocab(self):
        return self.builder.vocab

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    def batch(self, samples: Sequence[Any], seq_len: int | None = None, packed: bool = True) -> Batch:
        """Encode samples and pack them (``packed``) or pad them one per row."""
        streams = [self.builder.build(s) for s in samples]
        if packed:
            return pack(streams, seq_len or max(len(s) for s in streams), self.vocab.pad)
        return pad(streams, self.vocab.pad, seq_len)

    def forward(self, batch: Batch, **kw) -> torch.Tensor:
        return self.model(batch, **kw)

    # ---- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt, max_new_tokens: int = 64, **kw):
        """Continue an interleaved prompt (or a list of prompts, generated as one batch).

        Keyword options: ``temperature`` (0 = greedy), ``top_k``, ``top_p``, ``seed``,
        ``use_cache`` (KV cache, default True), ``stop_at_eos``. Returns a
        :class:`GenerationOutput` (``.text``, ``.segments``) or a list of them for a list of prompts.
        """
        return generate(self, prompt, max_new_tokens=max_new_tokens, **kw)

    # ---- saving and loading ----------------------------------------------------------------------
    def export(self, path: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and tokenizer files to a folder (no pickle)."""
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        specs = []
        for spec, tok in zip(self.tokenizer_specs, build_order(self)):
            files = tok.state_files()
            spec = dict(spec)
            if files:
                d = out / "tokenizers" / tok.name
                d.mkdir(parents=True, exist_ok=True)
                for fname, data in files.items():
                    (d / fname).write_bytes(data)
                spec["path"] = str(Path("tokenizers") / tok.name)
            specs.append(spec)
        cfg = asdict(self.config)
        meta = {"format": "anymodal", "version": FORMAT_VERSION, "tokenizers": specs, "model": cfg,
                "loss_weights": self.builder.loss_weights, "vocabulary": self.vocab.to_dict()}
        tmp = out / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        if self.config.tie_embeddings:
            state.pop("head.weight", None)
        save_file(state, str(out / (WEIGHTS_FILE + ".tmp")), metadata={"format": "pt"})
        os.replace(out / (WEIGHTS_FILE + ".tmp"), out / WEIGHTS_FILE)
        os.replace(tmp, out / CONFIG_FILE)  # config last: a folder with config.json is complete
        return out

    @classmethod
    def from_meta(cls, meta: dict, base_dir: Path | None = None) -> "AnyModal":
        specs = []
        for spec in meta["tokenizers"]:
            spec = dict(spec)
            p = spec.get("path")
            if base_dir is not None and isinstance(p, str) and not os.path.isabs(p):
                spec["path"] = str(base_dir / p)
            specs.append(spec)
        model_cfg = dict(meta["model"])
        model = cls(specs, ModelConfig(**model_cfg), meta.get("loss_weights"))
        model.tokenizer_specs = [dict(s) for s in meta["tokenizers"]]
        expected = meta.get("vocabulary")
        if expected is not None and expected != json.loads(json.dumps(model.vocab.to_dict())):
            raise ValueError("the saved vocabulary differs from the one the tokenizers build now "
                             "(a tokenizer changed its vocabulary size or order)")
        return model

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "AnyModal":
        """Load an export folder or a Lightning ``.ckpt`` (read with ``weights_only=True``)."""
        p = Path(path)
        if p.is_dir():
            from safetensors.torch import load_file

            cfg_file = p / CONFIG_FILE
            if not cfg_file.is_file():
                raise FileNotFoundError(f"{p}: no {CONFIG_FILE}; is this an anymodal export folder?")
            meta = json.loads(cfg_file.read_text())
            if meta.get("format") != "anymodal":
                raise ValueError(f"{cfg_file}: not an anymodal config")
            model = cls.from_meta(meta, p)
            state = load_file(str(p / WEIGHTS_FILE), device=str(map_location))
            if model.config.tie_embeddings:
                state["head.weight"] = state["embed.weight"]
            model.model.load_state_dict(state)
            return model.eval()
        if p.suffix == ".ckpt" and p.is_file():
            try:
                ckpt = torch.load(p, map_location=map_location, weights_only=True)
            except Exception as e:  # noqa: BLE001 - pickle payloads and foreign objects refused
                raise ValueError(f"{p}: refused to load (only plain tensors and data are allowed): {e}") from None
            meta = ckpt.get("anymodal")
            if meta is None:
                raise ValueError(f"{p}: not an anymodal checkpoint (no 'anymodal' entry)")
            model = cls.from_meta(meta)
            prefix = "net.model."
            state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
            model.model.load_state_dict(state)
            return model.eval()
        raise FileNotFoundError(f"{p}: neither an export folder nor a .ckpt file")

    def meta(self) -> dict:
        """The plain-data description saved in checkpoints and exports."""
        return {"format": "anymodal", "version": FORMAT_VERSION, "tokenizers": self.tokenizer_specs,
                "model": asdict(self.config), "loss_weights": self.builder.loss_weights,
                "vocabulary": self.vocab.to_dict()}


def build_order(model: AnyModal):
    """Tokenizers in the order of ``tokenizer_specs``."""
    return [model.vocab.tokenizers[model.vocab.index[s["name"]]] for s in model.tokenizer_specs]
