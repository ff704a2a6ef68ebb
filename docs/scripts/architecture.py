"""The architecture picture: one sample's path from segments to the decoder's outputs.

The token strip in the middle is the real stream :class:`anymodal.stream.StreamBuilder` builds
for the sample shown (``["What shape?", Image, Text("circle", role="target")]`` with the demo's
``text.bytes`` + ``image.patch`` tokenizers), coloured by each token's ``modality`` entry; the
decoder box lists the real configuration of the ``tiny`` preset.

    python docs/scripts/architecture.py [OUT_DIR]      # default docs/generated
"""

from __future__ import annotations

import sys
from pathlib import Path

from _figure import save

ROOT = Path(__file__).resolve().parents[2]
COLOURS = {"text": "#3b75af", "image": "#ef8636", "special": "#7f7f7f", "output": "#519e3e"}


def real_stream():
    import torch

    import anymodal as am
    from anymodal.model import tiny

    torch.manual_seed(0)
    model = am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8, "max_tokens": 9}], tiny())
    sample = ["What shape?", am.Image(torch.rand(3, 24, 24)), am.Text("circle", role="target")]
    return model, sample, model.builder.build(sample)


def main(out_dir: Path, fmt: str = "svg") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    model, sample, stream = real_stream()
    v, cfg = model.vocab, model.config
    fig, ax = plt.subplots(figsize=(11, 7.2))
    ax.set_xlim(0, 110)
    ax.set_ylim(0, 72)
    ax.axis("off")

    def box(x, y, w, h, text, colour="#ffffff", edge="#333333", size=9, weight="normal"):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.3,rounding_size=1.2", fc=colour, ec=edge,
                                    lw=1.1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, weight=weight, wrap=True)

    def arrow(x0, y0, x1, y1):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12, color="#333333",
                                     lw=1.1))

    def label(y, text):
        ax.text(1, y, text, fontsize=9, weight="bold", va="center", color="#444444")

    # 1. segments
    label(66, "1  segments")
    box(16, 63, 18, 6, '"What shape?"\nText (prompt)', "#dce8f5")
    box(40, 63, 18, 6, "Image(a.png)\n(prompt)", "#fde3cc")
    box(64, 63, 18, 6, 'Text("circle",\nrole="target")', "#dce8f5")
    # 2. tokenizers (their real fields)
    label(54, "2  modality\n    tokenizers")
    text_tok = v.text
    img_tok = v.tokenizer_for(sample[1])
    grid = img_tok.encode(sample[1]).grid
    box(16, 50, 18, 7, f"{text_tok.name}\n{text_tok.kind}: UTF-8 bytes\n-> ids", "#dce8f5", size=8)
    box(40, 50, 18, 7, f"{img_tok.name}\n{img_tok.kind}: {img_tok.input_dim}-dim patches\n-> vectors, grid {grid}",
        "#fde3cc", size=8)
    box(64, 50, 18, 7, f"{text_tok.name}\n-> ids (role=target:\ntrained on)", "#dce8f5", size=8)
    for x in (25, 49, 73):
        arrow(x, 62.6, x, 57.6)
    # 3. the real stream, one cell per token
    label(42, "3  one stream")
    n = len(stream)
    x0, width = 14, 94
    cw = width / n
    text_idx, special = v.index[v.text.name], v.special_modality
    begin, end = set(v.begin.values()), set(v.end.values())
    for k in range(n):
        mod, tid = int(stream.modality[k]), int(stream.ids[k])
        kind = "special" if mod == special else ("text" if mod == text_idx else "image")
        target = k > 0 and int(stream.labels[k - 1]) >= 0  # the previous position predicts this token
        ax.add_patch(plt.Rectangle((x0 + k * cw, 40), cw * 0.92, 4, fc=COLOURS[kind],
                                   ec="black" if target else "white", lw=1.4 if target else 0.3))
        if kind == "text":
            txt = chr(tid)
        elif kind == "image":
            txt = "v"
        else:
            txt = "<img" if tid in begin else "img>" if tid in end else v.token_name(tid).strip("<>")
        ax.text(x0 + (k + 0.46) * cw, 42, txt, ha="center", va="center", fontsize=6, color="white",
                family="monospace")
    ax.text(x0, 37.6, f"{n} real tokens: ids (text, markers, specials) | 'v': a patch vector from the side tensor | "
            "per token: modality, (t, h, w) position, span, bidirectional flag, label", fontsize=7.5, color="#333333")
    ax.text(x0, 35.4, f"black edge: a target token (trained on); unified vocabulary of {v.size} ids: text 0-255, "
            f"<bos> {v.bos}, <eos> {v.eos}, <pad> {v.pad}, <begin/end:{img_tok.name}> {v.begin[img_tok.name]}/"
            f"{v.end[img_tok.name]}", fontsize=7.5, color="#333333")
    for x in (25, 49, 73):
        arrow(x, 49.6, x, 44.4)
    # 4. the decoder
    label(22, "4  one decoder")
    box(14, 24, 22, 6, "embedding (ids)\n+ input projection\n(patch vectors), layer 0", "#eeeeee", size=8)
    rope = "M-RoPE over (t, h, w)" if cfg.rope == "mrope" else "RoPE"
    box(41, 17, 36, 13, f"{cfg.n_layers} x block\nRMSNorm -> attention (GQA {cfg.n_heads}/{cfg.n_kv_heads} heads"
        f"{', QK-norm' if cfg.qk_norm else ''},\n{rope}, one mask rule) -> RMSNorm -> SwiGLU\n"
        f"(`tiny` preset: dim {cfg.dim})", "#eeeeee", size=8)
    box(82, 24, 24, 6, f"LM head over the\nunified vocabulary ({v.size})", "#eeeeee", size=8)
    arrow(40, 34.6, 25, 30.6)
    arrow(36.6, 27, 40.6, 27)
    arrow(77.6, 27, 81.6, 27)
    # 5. outputs
    label(7, "5  outputs")
    box(41, 3, 30, 7, "text ids -> Text\n(loss per modality in training)", "#d8ecd3", size=8)
    box(75, 3, 31, 7, "discrete media codes (image.fsq, audio.encodec)\nconstrained to their id range\n"
        "-> tokenizer.decode -> Image / Audio", "#d8ecd3", size=7.5)
    arrow(94, 23.6, 56, 10.6)
    arrow(94, 23.6, 90, 10.6)
    ax.set_title("The path of one sample: segments -> tokenizers -> one interleaved stream -> one decoder from "
                 "layer 0", fontsize=10)
    fig.tight_layout()
    return [save(fig, Path(out_dir) / f"architecture.{fmt}")]


if __name__ == "__main__":
    print(*main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "generated"), sep="\n")
