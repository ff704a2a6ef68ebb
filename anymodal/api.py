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
from anymodal.integrity import sha256_file, verify_file
from anymodal.model import AnyModalTransformer, ModelConfig
from anymodal.model.resampler import check_resampled_tokenizers, resample_specs
from anymodal.packing import Batch, pack, pad
from anymodal.stream import StreamBuilder, build_tokenizers
from anymodal.tokenizers.registry import check_model_tokenizers, plugin_record

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1

__all__ = ["AnyModal", "GenerationOutput"]


def _spec(spec: dict | str) -> dict:
    return {"name": spec} if isinstance(spec, str) else dict(spec)


class AnyModal(nn.Module):
    """An early-fusion model: ``tokenizers`` (specs, in order) fix the unified vocabulary;
    ``config`` the decoder shape (its ``vocab_size``, ``continuous_inputs`` and ``resamplers`` are
    derived). A continuous tokenizer's spec may carry ``resample: {queries: N, layers: L}``: its
    items then become N learned-query tokens each (:mod:`anymodal.model.resampler`).

    >>> model = AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8}], debug())
    >>> small = AnyModal(["text.bytes", {"name": "image.patch", "resample": {"queries": 4}}], debug())
    """

    def __init__(self, tokenizers: Sequence[dict | str], config: ModelConfig | None = None,
                 loss_weights: dict[str, float] | None = None):
        super().__init__()
        self.tokenizer_specs = [_spec(s) for s in tokenizers]
        cfg = ModelConfig(**asdict(config)) if config is not None else ModelConfig()
        # a spec's resample: option gives that tokenizer's spans a learned-query resampler in the model
        resample = resample_specs(self.tokenizer_specs)
        tokenizers = build_tokenizers(self.tokenizer_specs)
        check_resampled_tokenizers(tokenizers, resample)
        self.builder = StreamBuilder(tokenizers, loss_weights,
                                     max_grid=cfg.max_grid if cfg.media_pos_embed else None,
                                     chat_template=cfg.chat_template,
                                     resample={n: r["queries"] for n, r in resample.items()})
        vocab = self.builder.vocab
        cfg.vocab_size = vocab.size
        cfg.continuous_inputs = {t.name: t.input_dim for t in vocab.tokenizers if t.kind == "continuous"}
        cfg.resamplers = resample
        cfg = ModelConfig(**asdict(cfg))  # validates the resamplers against the decoder's shape
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
    def generate(self, prompt: Any, max_new_tokens: int | None = None, *, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 sampling: dict[str, dict] | None = None, guidance: float | dict[str, float] | None = None,
                 use_cache: bool = True, stop_at_eos: bool = True, finish_spans: bool = True,
                 stream: bool = False, forced: list | None = None, return_logits: bool = False):
        """Continue an interleaved prompt (or a list of prompts, generated as one left-padded batch).

        Args:
            prompt: a string, a segment (``am.Image("a.png")``, ...), a list mixing them, HF-style
                chat messages, or a list of such prompts (one batch). An empty prompt, or one of
                another type, is an error.
            max_new_tokens: the budget of generated tokens (an int >= 1). ``None``: enough for the
                longest fixed-length media span the model can generate plus 64 text tokens. Capped
                by ``config.max_seq_len`` minus the prompt's length (a longer prompt is an error).
            temperature: 0 = greedy (default); otherwise softmax temperature (finite, > 0).
            top_k: sample only among the ``top_k`` most likely ids (an int >= 1; None = all).
            top_p: nucleus sampling: the smallest set of ids whose probability reaches ``top_p``
                (in (0, 1]; None = all).
            seed: seed of the sampling generator (reproducible sampling).
            sampling: per-tokenizer overrides of ``temperature``/``top_k``/``top_p``, used while that
                tokenizer's span is open (the text tokenizer's name for text), e.g.
                ``{"image.fsq": {"temperature": 0.7}}``.
            guidance: classifier-free guidance scale inside media spans (Ho & Salimans 2022): a float
                guides every tokenizer trained with ``cfg_dropout > 0``; ``{name: scale}`` guides
                exactly those; 1 or None = off.
            use_cache: KV cache (default); ``False`` recomputes the whole stream each step (a reference).
            stop_at_eos: end a prompt's reply at ``<eos>``; ``False`` runs to the budget.
            finish_spans: a fixed-length media span that has begun when the budget runs out is
                completed (at most ``fixed_length + 1`` tokens over the budget). ``False``: it is
                left out, ``out.truncated`` names the tokenizer and the tokens it still needed, and a
                warning says so.
            stream: return an iterator of segments as they complete (``(prompt_index, segment)`` for
                a batch) instead of the finished outputs.
            forced: ids (a list per prompt for a batch) emitted instead of sampled at the first
                steps: teacher forcing, to score a known continuation. Each must be allowed where it
                stands (e.g. codes only inside their span).
            return_logits: also return the (B, steps, V) logits each step sampled from (after
                guidance, before masking).

        Returns:
            A :class:`GenerationOutput` (``.text``, ``.segments``, ``.ids``, ``.truncated``), a list
            of them for a batch, an iterator with ``stream=True``, or ``(outputs, logits)`` with
            ``return_logits=True``.

        Example::

            out = model.generate(["What shape is it?", am.Image("a.png")], max_new_tokens=16)
            out.text                                   # "circle"
            pic = model.generate("a red circle at the top left", guidance=2.0)
            pic.segments[0].save("circle.png")         # an am.Image
            for seg in model.generate(["one beep per square", am.Image("sq.png")], stream=True):
                print(seg)
        """
        return generate(self, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, use_cache=use_cache, stop_at_eos=stop_at_eos,
                        return_logits=return_logits, sampling=sampling, guidance=guidance, stream=stream,
                        forced=forced, finish_spans=finish_spans)

    def chat(self, messages: list[dict], max_new_tokens: int = 64, **kw) -> GenerationOutput:
        """Answer the last user message of HF-style ``messages`` (needs ``config.chat_template``).
        For several turns, a :class:`anymodal.chat.Conversation` keeps the KV cache between them.

        Example::

            out = model.chat([{"role": "user", "content": [{"type": "image", "path": "a.png"},
                                                           {"type": "text", "text": "What shape?"}]}])
            out.text                                   # "circle"
        """
        from anymodal.chat import Conversation

        if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
            raise ValueError("messages must end with a user message ({'role': 'user', 'content': ...})")
        conv = Conversation(self, list(messages[:-1]))
        return conv.ask(messages[-1]["content"], max_new_tokens, **kw)

    def explain(self, prompt: Any, answer: str | None = None, *, rule: str = "rollout",
                layers: int | None = None, max_new_tokens: int = 32):
        """Where the model looked: attention maps of an answer over the prompt's media.

        ``answer``: the text to explain; ``None`` generates the model's greedy answer first.
        ``rule``: how heads and layers are aggregated, ``rollout`` (attention rollout, Abnar &
        Zuidema 2020) or ``last`` (mean over heads of the last ``layers`` layers); see
        :mod:`anymodal.explain`. Returns an :class:`anymodal.explain.Explanation` with one map per
        media span (image patches, video tubelets, audio time patches), for the whole answer and
        for each of its tokens.

        Example::

            exp = model.explain(["Where is the shape?", am.Image("a.png")])
            exp.answer, exp.maps[0].peak()             # "top left", (0, 0, 1)
            exp.save("map.png")                        # the heat map over the image
        """
        from anymodal.explain import explain

        return explain(self, prompt, answer, rule=rule, layers=layers, max_new_tokens=max_new_tokens)

    # ---- saving and loading ----------------------------------------------------------------------
    def export(self, path: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and tokenizer files to a folder (no pickle)."""
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        specs, written = [], [WEIGHTS_FILE]
        for spec, tok in zip(self.tokenizer_specs, build_order(self)):
            files = tok.state_files()
            spec = dict(spec)
            if files:
                d = out / "tokenizers" / tok.name
                d.mkdir(parents=True, exist_ok=True)
                for fname, data in files.items():
                    (d / fname).write_bytes(data)
                    written.append(str(Path("tokenizers") / tok.name / fname))
                spec["path"] = str(Path("tokenizers") / tok.name)
            specs.append(spec)
        cfg = asdict(self.config)
        meta = {"format": "anymodal", "version": FORMAT_VERSION, "tokenizers": specs, "model": cfg,
                "loss_weights": self.builder.loss_weights, "vocabulary": self.vocab.to_dict(),
                "plugins": plugin_record(s["name"] for s in specs)}
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        if self.config.tie_embeddings:
            state.pop("head.weight", None)
        save_file(state, str(out / (WEIGHTS_FILE + ".tmp")), metadata={"format": "pt"})
        os.replace(out / (WEIGHTS_FILE + ".tmp"), out / WEIGHTS_FILE)
        # SHA-256 of every file the export consists of, checked by load() (safetensors has no checksum)
        meta["sha256"] = {f: sha256_file(out / f) for f in written}
        tmp = out / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, out / CONFIG_FILE)  # config last: a folder with config.json is complete
        return out

    @classmethod
    def from_meta(cls, meta: dict, base_dir: Path | None = None) -> "AnyModal":
        # a tokenizer from a plugin that is not installed here: say which package to install
        check_model_tokenizers([_spec(s)["name"] for s in meta["tokenizers"]], meta.get("plugins"))
        specs = []
        for spec in meta["tokenizers"]:
            spec = dict(spec)
            if base_dir is not None and spec.get("path") is not None:
                spec["path"] = str(_inside(base_dir, spec["path"], f"tokenizer {spec.get('name')!r} path"))
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
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu",
             verify: bool = True) -> "AnyModal":
        """Load an export folder or a Lightning ``.ckpt`` (read with ``weights_only=True``).

        An export is checked before anything is built: the SHA-256 of every file it lists
        (``verify=False`` skips that), the weight shapes in ``model.safetensors``'s header against
        ``config.json``, and tokenizer files must lie inside the folder. A ``.ckpt`` is checked
        against its ``.sha256`` sidecar. Every failure is one ``ValueError`` naming the file.

        >>> model = AnyModal.load("runs/demo/export")  # doctest: +SKIP
        """
        p = Path(path)
        if p.is_dir():
            from safetensors.torch import load_file

            cfg_file = p / CONFIG_FILE
            if not cfg_file.is_file():
                raise FileNotFoundError(f"{p}: no {CONFIG_FILE}; is this an anymodal export folder?")
            try:
                meta = json.loads(cfg_file.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"{cfg_file}: not valid JSON ({e}); re-export the model") from None
            if not isinstance(meta, dict) or meta.get("format") != "anymodal":
                raise ValueError(f"{cfg_file}: not an anymodal config")
            if verify:
                for rel, digest in (meta.get("sha256") or {}).items():
                    verify_file(_inside(p, rel, "file listed in config.json"), digest, "exported file")
            _check_weights_match_config(p / WEIGHTS_FILE, meta.get("model") or {}, cfg_file)
            model = cls.from_meta(meta, p)
            state = load_file(str(p / WEIGHTS_FILE), device=str(map_location))
            if model.config.tie_embeddings:
                state["head.weight"] = state["embed.weight"]
            model.model.load_state_dict(state)
            return model.eval()
        if p.suffix == ".ckpt" and p.is_file():
            from anymodal.train.checkpoint_io import load_checkpoint_file

            # one line for damaged (empty, truncated, not a checkpoint, digest mismatch) or unsafe files
            ckpt = load_checkpoint_file(p, map_location, verify=verify)
            meta = ckpt.get("anymodal") if isinstance(ckpt, dict) else None
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
                "vocabulary": self.vocab.to_dict(), "plugins": plugin_record(s["name"] for s in self.tokenizer_specs)}


def _inside(folder: Path, rel: object, what: str) -> Path:
    """``folder / rel``, refused unless it stays inside ``folder``: an export's files are its own
    (a config.json naming ``/etc/passwd`` or ``../../x`` as a tokenizer file is a broken or
    hostile export)."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        raise ValueError(f"{folder / CONFIG_FILE}: {what} {rel!r} must be a relative path inside {folder}")
    q = (folder / rel).resolve()
    if not q.is_relative_to(folder.resolve()):
        raise ValueError(f"{folder / CONFIG_FILE}: {what} {rel!r} points outside the export folder {folder}")
    return q


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header, read without loading any tensor."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the export is incomplete, export it again")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little") if size >= 8 else -1
        if not 0 < n <= min(size - 8, 100 << 20):
            raise ValueError(f"{path}: not a safetensors file (header size {n}, file size {size})")
        try:
            header = json.loads(fh.read(n))
            return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise ValueError(f"{path}: damaged safetensors header") from None


def _check_weights_match_config(weights: Path, cfg: dict, cfg_file: Path) -> None:
    """Refuse an export whose ``config.json`` sizes disagree with its weights *before* building
    the model: a config edited to ``dim=2**20`` would otherwise allocate gigabytes first. The
    expected shapes come from the decoder built on the ``meta`` device (no memory)."""
    got = _safetensors_shapes(weights)
    try:
        mc = ModelConfig(**cfg)
        with torch.device("meta"):
            ref = AnyModalTransformer(mc, {n: i for i, n in enumerate(mc.continuous_inputs)})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cfg_file}: bad model config: {e}") from None
    want = {k: list(v.shape) for k, v in ref.state_dict().items()}
    if mc.tie_embeddings:
        want.pop("head.weight", None)
    sizes = f"dim={mc.dim}, n_layers={mc.n_layers}, vocab_size={mc.vocab_size}"
    for k in sorted(want.keys() | got.keys()):
        if want.get(k) != got.get(k):
            raise ValueError(f"{weights} does not match {cfg_file.name} ({sizes}): {k!r} is "
                             f"{got.get(k, 'missing')} in the weights, {want.get(k, 'absent')} in the config; "
                             f"the folder mixes two models: export it again")


def build_order(model: AnyModal):
    """Tokenizers in the order of ``tokenizer_specs``."""
    return [model.vocab.tokenizers[model.vocab.index[s["name"]]] for s in model.tokenizer_specs]
