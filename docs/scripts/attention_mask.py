"""The attention-mask picture, drawn from the real mask of a real packed batch.

Two samples (an image question and a short text exchange) go through the real stream builder
and packer into one row; :meth:`anymodal.model.attention.MaskInfo.dense` gives the (T, T) mask
every attention backend implements. Cells are coloured by *why* they are allowed: causal
(``j <= i`` in the same document) or bidirectional (a later token of the same media span).

    python docs/scripts/attention_mask.py [OUT_DIR]      # default docs/generated
"""

from __future__ import annotations

import sys
from pathlib import Path

from _figure import save

ROOT = Path(__file__).resolve().parents[2]


def packed_example():
    """(batch, token labels, vocabulary) of two samples packed into one row of 24 tokens."""
    import torch

    import anymodal as am
    from anymodal.model import debug
    from anymodal.packing import pack

    torch.manual_seed(0)
    model = am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8, "max_tokens": 4}], debug())
    samples = [["Hue?", am.Image(torch.rand(3, 16, 16)), am.Text("red", role="target")],  # 2x2 patches
               ["Hi", am.Text("yo", role="target")]]
    streams = [model.builder.build(s) for s in samples]
    batch = pack(streams, seq_len=sum(len(s) for s in streams) + 2, pad_id=model.vocab.pad)
    assert batch.ids.shape[0] == 1, "both samples must share one row"
    v = model.vocab
    labels, patch = [], 0
    for t, mod in zip(batch.ids[0].tolist(), batch.modality[0].tolist()):
        if v.tokenizers[mod].kind == "continuous" if mod < len(v.tokenizers) else False:
            labels.append(f"patch{patch}")
            patch += 1
        elif t < v.bos:
            labels.append(repr(chr(t))[1:-1] if t < 128 else f"b{t}")
        else:
            labels.append(v.token_name(t).replace("image.patch", "img"))
    return batch, labels, v


def main(out_dir: Path, fmt: str = "svg") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from anymodal.model.attention import MaskInfo

    batch, labels, _ = packed_example()
    allowed = MaskInfo.from_batch(batch.doc, batch.span, batch.bidir).dense()[0, 0].numpy()  # (T, T) bool
    T = allowed.shape[0]
    i, j = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    doc = batch.doc[0].numpy()
    kind = np.zeros((T, T), dtype=int)  # 0 blocked
    kind[allowed & (j <= i)] = 1  # causal
    kind[allowed & (j > i)] = 2  # bidirectional span
    kind[allowed & (doc[:, None] < 0)] = 3  # padding (its own document, no loss)
    colours = ["#f4f4f4", "#3b75af", "#ef8636", "#c8c8c8"]
    fig, ax = plt.subplots(figsize=(7.6, 7.6))
    ax.imshow(kind, cmap=ListedColormap(colours), vmin=0, vmax=3, interpolation="nearest")
    ax.set_xticks(range(T), labels, rotation=90, fontsize=7, family="monospace")
    ax.set_yticks(range(T), labels, fontsize=7, family="monospace")
    ax.set_xticks(np.arange(-0.5, T), minor=True)
    ax.set_yticks(np.arange(-0.5, T), minor=True)
    ax.grid(which="minor", color="white", lw=0.6)
    ax.tick_params(which="minor", length=0)
    for b in np.nonzero(doc[1:] != doc[:-1])[0]:  # document boundaries
        ax.axhline(b + 0.5, color="black", lw=1.2)
        ax.axvline(b + 0.5, color="black", lw=1.2)
    ax.set_xlabel("key j (attended to)")
    ax.set_ylabel("query i (attending)")
    fig.legend(handles=[Patch(color=colours[1], label="allowed: same document, j <= i"),
                       Patch(color=colours[2], label="allowed: same bidirectional media span, j > i"),
                       Patch(color=colours[0], label="blocked"),
                       Patch(color=colours[3], label="row padding (own document, no label)")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    ax.set_title("MaskInfo.dense() of one packed row: two documents, one 2x2 image span", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return [save(fig, Path(out_dir) / f"attention-mask.{fmt}")]


if __name__ == "__main__":
    print(*main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "generated"), sep="\n")
