"""Attention maps over the media of a prompt: where the model looked when it answered.

    exp = model.explain(["Where is the shape?", am.Image("a.png")])   # answers greedily first
    exp.answer                      # "top left"
    exp.maps[0].heatmap()           # (t, h, w) attention mass on each image patch
    exp.maps[0].peak()              # (t, h, w) of the patch that got the most
    exp.save("map.png")             # the heat map drawn over the image

How a map is made. The prompt and the answer are laid out as one stream, exactly as generation
lays them out, and run once through the decoder with :func:`anymodal.model.transformer.record_attention`
on (every layer then runs the eager reference under the same mask rule and keeps its
probabilities). Answer token *j* was predicted at the position just before it, so the query of
token *j* is that position (the prompt's last token for the first answer token). Its attention
row over the stream is aggregated over heads and layers by one of two rules:

- ``rollout`` (the default): attention rollout (Abnar & Zuidema 2020). Each layer's head-mean
  attention ``A_l`` gets the residual connection added, ``0.5 A_l + 0.5 I``, rows renormalised,
  and the layers are multiplied, ``R = Ã_L ... Ã_1``: the share of each *input* token in the
  query's last hidden state, through every path. It localises better than the last layers' mean
  on the suite's position and counting questions (``benchmarks/bench_explain.py``; a tiny model
  after 300 steps, 200 held-out images): its peak falls on an object patch for 1.00 of them
  against 0.76 (chance 0.22), with the same mass on object patches (0.50 vs 0.49). A plausible
  reason: the last layers also read the tokens that had already gathered the image in earlier
  layers (markers, text), which rollout credits back to the patches.
- ``last``: the mean over heads of the last ``layers`` layers (default: the last half) of the
  raw attention probabilities: what the top of the network read directly.

A span's values are *mass*: the share of the query's attention (rollout: of its input
attribution) that fell on each of that medium's tokens; all tokens of the stream sum to 1, so
``MediaMap.share()`` says how much went to that medium at all. The whole answer's map is the
mean over its tokens. Token k of a span sits at its (t, h, w) grid cell (the tokenizer's
layout), so the map is a (t, h, w) tensor: (1, rows, cols) over an image's patches, (steps,
rows, cols) over a video's tubelets, (patches, 1, 1) over an audio clip's time patches.
:meth:`Explanation.save` stretches the grid over the medium (image patch tokenizers resize the
whole image to the grid, so patch (r, c) covers rows ``r/rows .. (r+1)/rows`` of the picture).

Through a resampler (a tokenizer with ``resample:``, :mod:`anymodal.model.resampler`) the span's
tokens are N learned queries, not patches. The map goes back to the tokenizer's inputs through
the resampler's own attention, by the same rollout rule: per resampler layer, the head-mean
attention of the queries over [inputs; queries] with the residual added (``0.5 A + 0.5 I``) gives
each query's input attribution ``C_l = Ã_inputs + Ã_queries C_{l-1}`` (``C_0 = 0``: a learned
query holds no input before the first layer), rows renormalised to 1
(:meth:`~anymodal.model.resampler.Resampler.attribution`). An input's mass is then the sum over
queries of the query's mass times that share (``MediaMap.per_token = queries @ attribution``),
so the span's total mass, ``share()``, is the queries' total and every map above (heat map, peak,
drawing) is over the patches, tubelets or time patches as without a resampler.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anymodal.segments import Image, Segment, Text

if TYPE_CHECKING:
    from anymodal.api import AnyModal
    from anymodal.tokenizers import ModalityTokenizer

RULES = ("rollout", "last")
DEFAULT_RULE = "rollout"

__all__ = [
    "DEFAULT_RULE",
    "RULES",
    "Explanation",
    "MediaMap",
    "aggregate",
    "explain",
    "object_cells",
    "peak_on_object_rate",
]


# ---- aggregation over heads and layers ----------------------------------------------------------
def aggregate(probs: list[torch.Tensor], queries: torch.Tensor, rule: str = DEFAULT_RULE,
              layers: int | None = None) -> torch.Tensor:
    """(n_queries, T) attention of ``queries`` over the stream, from per-layer (H, T, T) probabilities.

    ``rule``: ``rollout`` (Abnar & Zuidema 2020) or ``last`` (mean of the last ``layers`` layers,
    default half of them); see the module docstring.

    >>> p = [torch.softmax(torch.randn(2, 5, 5), -1) for _ in range(3)]
    >>> aggregate(p, torch.tensor([4]), "last").shape
    torch.Size([1, 5])
    """
    if rule not in RULES:
        raise ValueError(f"explain: rule={rule!r} is unknown; use one of {RULES}")
    heads = torch.stack([p.float().mean(0) for p in probs])  # (L, T, T), mean over heads
    n = heads.shape[0]
    if rule == "last":
        k = max(1, n // 2) if layers is None else layers
        if not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"explain: layers={layers!r} must be an int in [1, {n}] (the model's layers)")
        return heads[-k:].mean(0)[queries]
    eye = torch.eye(heads.shape[-1])
    rollout = eye
    for a in heads:  # layer 1 first: R = Ã_L ... Ã_1
        a = 0.5 * a + 0.5 * eye  # the residual stream carries the token itself
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    return rollout[queries]


# ---- results ------------------------------------------------------------------------------------
@dataclass
class MediaMap:
    """Attention over one media span of the prompt.

    ``per_token``: (n_answer_tokens, n) mass on each of the span's n tokens for each answer token;
    ``cells``: (n, 3) the (t, h, w) grid cell of each token; ``grid``: the grid's size.

    A resampled span (:mod:`anymodal.model.resampler`) is mapped back to the tokenizer's n input
    vectors (patches, tubelets, time patches): ``queries`` holds the (n_answer_tokens, N) mass on
    its N query tokens and ``attribution`` the resampler's (N, n) query-to-input shares, so
    ``per_token = queries @ attribution`` (see the module docstring).
    """

    segment: Segment
    tokenizer: ModalityTokenizer
    per_token: torch.Tensor
    cells: torch.Tensor
    grid: tuple[int, int, int]
    vectors: torch.Tensor | None = field(default=None, repr=False)  # what a continuous tokenizer fed in
    queries: torch.Tensor | None = field(default=None, repr=False)  # resampled span: mass on its queries
    attribution: torch.Tensor | None = field(default=None, repr=False)  # resampled span: (N, n)

    @property
    def modality(self) -> str:
        return self.segment.modality

    def mass(self, token: int | None = None) -> torch.Tensor:
        """(n,) mass on each token of the span: the whole answer's (mean over its tokens), or answer
        token ``token``'s."""
        if token is None:
            return self.per_token.mean(0)
        if not isinstance(token, int) or not -len(self.per_token) <= token < len(self.per_token):
            raise IndexError(f"explain: token={token!r} is not an answer token index "
                             f"(the answer has {len(self.per_token)} tokens)")
        return self.per_token[token]

    def share(self, token: int | None = None) -> float:
        """The total mass on this medium (0..1)."""
        return float(self.mass(token).sum())

    def heatmap(self, token: int | None = None) -> torch.Tensor:
        """(t, h, w) mass on each grid cell (0 where the grid has no token)."""
        heat = torch.zeros(self.grid)
        heat[self.cells[:, 0], self.cells[:, 1], self.cells[:, 2]] = self.mass(token)
        return heat

    def peak(self, token: int | None = None) -> tuple[int, int, int]:
        """(t, h, w) of the cell with the most mass."""
        k = int(self.mass(token).argmax())
        return tuple(int(c) for c in self.cells[k])

    def image(self, token: int | None = None, width: int = 320):
        """The map drawn over the medium, a ``PIL.Image`` (see :meth:`Explanation.save`)."""
        return draw_map(self, token, width)


@dataclass
class Explanation:
    """What :func:`explain` returns: the answer, its tokens and one :class:`MediaMap` per media span.

    ``token_probs``: (n,) the model's probability of each answer token where it was predicted (a
    wrong answer the model was unsure of shows a low one). ``rule``: how heads and layers were
    aggregated.
    """

    prompt: list[Segment]
    answer: str
    tokens: list[str]
    token_probs: torch.Tensor
    maps: list[MediaMap]
    rule: str

    def save(self, path: str | os.PathLike, token: int | None = None, width: int = 320) -> Path:
        """Draw every media map over its medium, one under another with a caption, into a PNG.

        ``token``: one answer token's map (an index into ``tokens``); ``None``: the whole answer.

        Example::

            model.explain(["How many shapes?", am.Image("a.png")]).save("map.png")
        """
        path = Path(path)
        draw_explanation(self, token, width).save(path)
        return path


# ---- the entry point ---------------------------------------------------------------------------
def _media_segments(model: AnyModal, segs: list[Segment]) -> list[Segment]:
    """The segments that become media spans, in stream order (what ``StreamBuilder.build`` numbers)."""
    return [s for s in segs if s.modality != "turn" and model.vocab.tokenizer_for(s).modality != "text"]


@torch.no_grad()
def explain(model: AnyModal, prompt: Any, answer: str | None = None, *, rule: str = DEFAULT_RULE,
            layers: int | None = None, max_new_tokens: int = 32) -> Explanation:
    """Attention maps of ``answer`` (or of the model's own greedy answer) over the prompt's media.

    See :meth:`anymodal.AnyModal.explain` and the module docstring for the rule.
    """
    from anymodal.generate import _check_prompt
    from anymodal.model.transformer import record_attention
    from anymodal.packing import pad

    if rule not in RULES:
        raise ValueError(f"explain: rule={rule!r} is unknown; use one of {RULES}")
    segs = _check_prompt(prompt)
    if any(isinstance(s, list) for s in segs) or not all(isinstance(s, Segment) for s in segs):
        raise TypeError("explain: pass one prompt (a list of segments), not a batch of prompts")
    media = _media_segments(model, segs)
    if not media:
        raise ValueError("explain: the prompt has no media segment (image, video, audio) to map attention onto; "
                         "add one, e.g. ['Where is the shape?', am.Image('a.png')]")
    if answer is None:
        answer = model.generate(segs, max_new_tokens=max_new_tokens).text
        if not answer:
            raise ValueError("explain: the model's answer has no text to explain; pass answer='...' to "
                             "explain a given answer")
    if not isinstance(answer, str) or not answer:
        raise TypeError(f"explain: answer must be a non-empty string (or None: the model's own answer), "
                        f"got {answer!r}")
    builder, vocab = model.builder, model.vocab
    # one build (media decoded once): the answer's tokens are the stream's last ones, as in generation
    full = builder.build([*segs, Text(answer, role="target")], add_eos=False, cfg_dropout=False)
    said = vocab.text.encode(Text(answer)).ids + vocab.offset[vocab.text.name]
    n_prompt = len(full) - len(said)
    if n_prompt < 1 or not torch.equal(full.ids[n_prompt:], said):
        raise ValueError("explain: the answer does not end the prompt's stream as text (a chat prompt "
                         "should end where the reply begins)")
    if len(full) > model.config.max_seq_len:
        raise ValueError(f"explain: prompt + answer are {len(full)} tokens > model.arch.max_seq_len="
                         f"{model.config.max_seq_len}; shorten the prompt or the answer")
    answer_ids = full.ids[n_prompt:]
    queries = torch.arange(n_prompt - 1, len(full) - 1)  # position j predicts token j + 1
    net = model.model
    was_training = net.training
    net.eval()
    try:
        with record_attention(net) as recorded:
            logits = net(pad([full], vocab.pad).to(model.device))  # (1, T, V)
    finally:
        net.train(was_training)
    probs = [layer[0][0].cpu() for layer in recorded]  # per layer (H, T, T)
    rows = aggregate(probs, queries, rule, layers)  # (n_answer, T)
    token_probs = torch.softmax(logits[0, queries].float(), -1).gather(1, answer_ids[:, None].to(logits.device))
    maps = []
    owner = [vocab.tokenizers[int(full.modality[(full.span == j).nonzero()[0, 0]])].name
             for j in range(1, len(media) + 1)]  # the tokenizer of each span
    for k, seg in enumerate(media, start=1):
        at = (full.span == k).nonzero().squeeze(1)
        tok = vocab.tokenizers[int(full.modality[at[0]])]
        cells = full.grid[:, at].T.contiguous()  # (n, 3) local (t, h, w)
        per_token, vec, queries, attribution = rows[:, at], None, None, None
        if tok.name in builder.resample:  # the span's tokens are queries: map them back to the inputs
            item = owner[:k - 1].count(tok.name)  # this span's item among the tokenizer's
            vec, cells, attribution = _resampled_item(net, full, tok.name, item)
            queries, per_token = per_token, per_token @ attribution  # (n_answer, N) @ (N, M) -> (n_answer, M)
        elif tok.kind == "continuous":  # this span's rows of the tokenizer's side tensor
            before = sum(int((full.span == j).sum()) for j in range(1, k) if owner[j - 1] == tok.name)
            vec = full.vectors[tok.name][before:before + len(at)]
        grid = tuple(int(c) + 1 for c in cells.max(0).values)
        maps.append(MediaMap(seg, tok, per_token, cells, grid, vec, queries, attribution))
    text = vocab.text
    tokens = [text.decode(torch.tensor([int(i) - vocab.offset[text.name]])) for i in answer_ids]
    return Explanation(segs, answer, tokens, token_probs[:, 0].cpu(), maps, rule)


def _resampled_item(net, full, name: str, item: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``item``-th resampled item of tokenizer ``name`` in the stream: its input vectors (M, D),
    their (t, h, w) cells (M, 3) and the resampler's query-to-input attribution (N, M)."""
    from anymodal.constants import GRID_SUFFIX
    from anymodal.model.resampler import item_lengths
    from anymodal.model.transformer import _key

    coords = full.vectors[name + GRID_SUFFIX]
    lengths = item_lengths(coords)
    start = sum(lengths[:item])
    sl = slice(start, start + lengths[item])
    vec, cells = full.vectors[name][sl], coords[sl]
    dev = net.embed.weight.device
    x = net.input_proj[_key(name)](vec.to(dev, net.embed.weight.dtype))
    attribution = net.resamplers[_key(name)].attribution(x, cells.to(dev))[0].cpu()
    return vec, cells.contiguous(), attribution


# ---- does a map mean something? ---------------------------------------------------------------
def object_cells(image: torch.Tensor, grid: tuple[int, int], min_cover: float = 0.1) -> torch.Tensor:
    """(rows, cols) bool: the grid cells whose pixels are at least ``min_cover`` object, where the
    object is every pixel off the background (the image's most common colour: the synthetic suite
    draws shapes on one flat grey). ``image``: (3, H, W) in [0, 1]."""
    q = (image * 255).round().to(torch.int32)
    flat = (q[0] * 65536 + q[1] * 256 + q[2]).reshape(-1)
    values, counts = flat.unique(return_counts=True)
    bg = int(values[counts.argmax()])
    bg_rgb = torch.tensor([bg // 65536, bg // 256 % 256, bg % 256], dtype=torch.int32)[:, None, None]
    obj = ((q - bg_rgb).abs().amax(0) > 12).float()[None, None]  # (1, 1, H, W), > ~5% off the grey
    rows, cols = grid
    cover = torch.nn.functional.adaptive_avg_pool2d(obj, (rows, cols))[0, 0]  # exact when the grid divides H, W
    return cover >= min_cover


def peak_on_object_rate(model: AnyModal, manifest: str | os.PathLike, tasks=("image.position", "image.count"),
                        rules=RULES, limit: int | None = None) -> dict:
    """How often the peak of the answer's map falls on an object patch, on a synthetic manifest's
    single-image questions, with chance (= object patches / all patches, averaged over items).

    The map explains the reference answer (teacher-forced), so it says where the model looked while
    giving the right answer. ``{rule}_mass`` is the finer measure: the share of the image's mass on
    object patches (chance: the same ``chance``). Returns ``{task: {"n", "chance", rule: rate,
    rule_mass: share, ...}, "overall": {...}}``.
    """
    import json

    from anymodal.media import load_image

    manifest = Path(manifest)
    records = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    records = [r for r in records if r["task"] in tasks]
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError(f"{manifest}: no records of the tasks {list(tasks)}")
    sums: dict[str, dict[str, float]] = {}
    for r in records:
        segs = [s for s in r["segments"] if s.get("role") != "target"]
        text = [s["text"] for s in segs if s["type"] == "text"]
        paths = [manifest.parent / s["path"] for s in segs if s["type"] == "image"]
        if len(paths) != 1:
            raise ValueError(f"{r['id']}: peak_on_object_rate reads questions about one image, got {len(paths)}")
        prompt = [*text, Image(str(paths[0]))]
        row = sums.setdefault(r["task"], {"n": 0, "chance": 0.0, **{k: 0.0 for k in rules},
                                          **{f"{k}_mass": 0.0 for k in rules}})
        row["n"] += 1
        for rule in rules:
            m = explain(model, prompt, r["answer"], rule=rule).maps[0]
            cells = object_cells(load_image(paths[0]), m.grid[1:])
            _, h, w = m.peak()
            row[rule] += float(cells[h, w])
            heat = m.heatmap()[0]  # (rows, cols)
            row[f"{rule}_mass"] += float(heat[cells].sum() / heat.sum().clamp(min=1e-12))
        row["chance"] += float(cells.float().mean())
    out = {task: {"n": row["n"], **{k: v / row["n"] for k, v in row.items() if k != "n"}} for task, row in sums.items()}
    n = sum(row["n"] for row in sums.values())
    keys = ("chance", *rules, *(f"{k}_mass" for k in rules))
    out["overall"] = {"n": n, **{k: sum(row[k] for row in sums.values()) / n for k in keys}}
    return out


# ---- drawing (Pillow) ---------------------------------------------------------------------------
def _colour(heat: torch.Tensor) -> torch.Tensor:
    """(...,) values in [0, 1] -> (..., 3) RGB in [0, 1] on a black-red-yellow ramp."""
    h = heat.clamp(0, 1)[..., None]
    return torch.cat([(h * 2).clamp(0, 1), (h * 2 - 1).clamp(0, 1), torch.zeros_like(h)], -1)


def _overlay(rgb: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) picture in [0, 1] + (h, w) heat (max 1) stretched over it -> (H, W, 3). The least
    attended cells stay as they are; the most attended are tinted yellow at 60%."""
    H, W = rgb.shape[:2]
    big = torch.nn.functional.interpolate(heat[None, None], size=(H, W), mode="nearest")[0, 0]  # patch -> pixels
    alpha = 0.6 * big[..., None]
    return rgb * (1 - alpha) + _colour(big) * alpha


def _to_pil(rgb: torch.Tensor, width: int, height: int | None = None):
    from PIL import Image

    arr = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    img = Image.fromarray(arr, "RGB")
    height = height or max(1, round(img.height * width / img.width))
    return img.resize((width, height), Image.NEAREST)  # nearest: the patches stay visible


def _mark_cell(img, h: int, w: int, rows: int, cols: int) -> None:
    from PIL import ImageDraw

    cw, ch = img.width / cols, img.height / rows
    ImageDraw.Draw(img).rectangle([w * cw, h * ch, (w + 1) * cw - 1, (h + 1) * ch - 1], outline=(0, 255, 255), width=2)


def _picture_of(m: MediaMap) -> torch.Tensor | None:
    """The medium as the model saw it: (T, H, W, 3) in [0, 1] (images: T = 1), or None."""
    tok, seg = m.tokenizer, m.segment
    if m.modality == "image":
        from anymodal.media import load_image

        return load_image(seg.data, name=seg.source).permute(1, 2, 0)[None]
    if m.modality == "video" and m.vectors is not None and hasattr(tok, "tubelet") and hasattr(tok, "patch_size"):
        from anymodal.tokenizers.video_tubelet import untubeletify

        frames = untubeletify(m.vectors, m.grid, tok.tubelet, tok.patch_size)  # (T, 3, H, W) in [-1, 1]
        return (frames[::tok.tubelet] * 0.5 + 0.5).permute(0, 2, 3, 1)  # the first frame of each tubelet
    return None


def _spectrogram(m: MediaMap) -> torch.Tensor | None:
    """(n_mels, frames) log-mel of an ``audio.mel`` span, from its token vectors (laid out (mel, frame))."""
    tok = m.tokenizer
    if m.vectors is None or not (hasattr(tok, "n_mels") and hasattr(tok, "patch_frames")):
        return None
    n = m.vectors.shape[0]
    x = m.vectors.reshape(n, tok.n_mels, tok.patch_frames).permute(1, 0, 2).reshape(tok.n_mels, -1)
    return x.flip(0)  # low frequencies at the bottom


def draw_map(m: MediaMap, token: int | None = None, width: int = 320):
    """One media map as a ``PIL.Image``: the heat map over the picture (beside the picture itself for
    an image; a row of time steps for a video,
    the spectrogram with a heat strip under it for audio; the heat alone when the medium cannot be
    drawn). The peak cell is outlined in cyan."""
    from PIL import Image

    heat = m.heatmap(token)  # (t, h, w)
    lo = m.mass(token).min()  # colours run from the span's least to its most attended token
    norm = ((heat - lo) / (heat.max() - lo).clamp(min=1e-12)).clamp(min=0)
    t_peak, h_peak, w_peak = m.peak(token)
    if m.modality == "audio" or (m.grid[1] == 1 and m.grid[2] == 1 and m.modality != "image"):
        strip = norm[:, 0, 0]  # (t,) over time
        spec = _spectrogram(m)
        if spec is not None:
            grey = (spec - spec.min()) / (spec.max() - spec.min()).clamp(min=1e-6)
            top = _to_pil(_overlay(grey[..., None].expand(-1, -1, 3), strip[None]), width)
        else:
            top = None
        bar = _to_pil(_colour(strip)[None], width, 16)
        _mark_cell(bar, 0, t_peak, 1, len(strip))
        canvas = Image.new("RGB", (width, (top.height + 2 if top else 0) + bar.height), (255, 255, 255))
        if top:
            canvas.paste(top, (0, 0))
        canvas.paste(bar, (0, canvas.height - bar.height))
        return canvas
    pics = _picture_of(m)
    t, rows, cols = m.grid
    tiles = []
    if t == 1 and pics is not None:  # an image: the picture itself first, so the tint hides nothing
        tiles.append(_to_pil(pics[0].float(), (width - 2) // 2))
    for k in range(t):
        base = pics[min(k, len(pics) - 1)] if pics is not None else torch.full((rows, cols, 3), 0.5)
        tile = _to_pil(_overlay(base.float(), norm[k]), (width - 2) // 2 if t == 1 else max(48, width // min(t, 4)))
        if k == t_peak:
            _mark_cell(tile, h_peak, w_peak, rows, cols)
        tiles.append(tile)
    per_row = min(len(tiles), 4)
    t = len(tiles)
    tw, th = tiles[0].size
    canvas = Image.new("RGB", (tw * per_row + 2 * (per_row - 1), (th + 2) * ((t + per_row - 1) // per_row) - 2),
                       (255, 255, 255))
    for k, tile in enumerate(tiles):
        canvas.paste(tile, ((k % per_row) * (tw + 2), (k // per_row) * (th + 2)))
    return canvas


def _where(m: MediaMap, token: int | None) -> str:
    t, h, w = m.peak(token)
    tok = m.tokenizer
    if m.modality == "audio" and all(hasattr(tok, a) for a in ("patch_frames", "hop", "sample_rate")):
        step = tok.patch_frames * tok.hop / tok.sample_rate  # seconds per time patch
        return f"{t * step:.2f}-{(t + 1) * step:.2f} s"
    if m.grid[1:] == (1, 1):
        return f"token {t} of {m.grid[0]}"
    where = f"row {h + 1}/{m.grid[1]}, column {w + 1}/{m.grid[2]}"
    return where if m.grid[0] == 1 else f"time step {t + 1}/{m.grid[0]}, {where}"


def draw_explanation(exp: Explanation, token: int | None = None, width: int = 320):
    """Every media map of ``exp`` under a caption (question, answer, its probability, the rule)."""
    from PIL import Image, ImageDraw

    question = " ".join(s.data for s in exp.prompt if s.modality == "text" and isinstance(s.data, str))
    if token is None:
        said = f"answer: {exp.answer!r}  (p = {float(exp.token_probs.prod()):.2f})"
    else:
        p = float(exp.token_probs[token])
        said = f"answer token {token}: {exp.tokens[token]!r} of {exp.answer!r}  (p = {p:.2f})"
    lines = [question[:200], said, f"rule: {exp.rule}"]
    pictures = [draw_map(m, token, width) for m in exp.maps]
    for m, pic in zip(exp.maps, pictures):
        lines.append(f"{m.modality} ({m.tokenizer.name}): {m.share(token):.0%} of the attention, "
                     f"peak at {_where(m, token)}")
    import textwrap

    lines = [part for line in lines for part in textwrap.wrap(line, max(20, width // 6))]
    line_h = 13
    head = line_h * len(lines) + 6
    w = max([width] + [p.width for p in pictures])
    canvas = Image.new("RGB", (w, head + sum(p.height + 6 for p in pictures)), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        d.text((3, 3 + i * line_h), line, fill=(0, 0, 0))
    y = head
    for pic in pictures:
        canvas.paste(pic, (0, y))
        y += pic.height + 6
    return canvas
