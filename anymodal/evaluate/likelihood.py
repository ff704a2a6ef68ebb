"""Log-likelihood of text continuations given interleaved prompts (for multiple choice and lmms-eval).

Each (prompt, continuation) pair becomes the training stream of ``prompt + [Text(continuation,
role="target")]``, so exactly the continuation's tokens (and ``<eos>`` when asked) carry
labels, as in training. Streams are packed into rows (samples never see each other, see
:mod:`anymodal.packing`), one forward pass scores a whole chunk, and the log-probabilities of
the labelled tokens are summed per stream: lm-evaluation-harness's ``loglikelihood``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from anymodal.packing import assign_rows, collate_rows
from anymodal.segments import Text
from anymodal.stream import IGNORE

if TYPE_CHECKING:
    from anymodal.api import AnyModal


@torch.no_grad()
def continuation_logprobs(model: "AnyModal", prompts: Sequence[Sequence], continuations: Sequence[str],
                          add_eos: bool = True, max_tokens: int = 8192) -> list[tuple[float, bool]]:
    """``(sum log p(continuation | prompt), is_greedy)`` per pair.

    ``add_eos``: score the end of the answer too (``"1"`` and ``"12"`` then differ); lmms-eval
    asks without it. ``is_greedy``: every continuation token is the argmax at its position.
    ``max_tokens`` bounds the tokens of one forward pass ((rows x seq_len) logits are held).

    >>> continuation_logprobs(model, [["What colour?", am.Image("a.png")]] * 2, ["red", "blue"])
    [(-0.02, True), (-4.1, False)]
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts for {len(continuations)} continuations")
    if not prompts:
        return []
    was_training = model.training
    model.eval()
    streams = [model.builder.build(list(p) + [Text(c, role="target")], add_eos=add_eos)
               for p, c in zip(prompts, continuations)]
    seq_len = max(len(s) for s in streams)
    rows = assign_rows([len(s) for s in streams], max(seq_len, min(max_tokens, 4 * seq_len)))
    T = max(sum(len(streams[i]) for i in row) for row in rows)
    per_pass = max(1, max_tokens // T)
    out: list[tuple[float, bool] | None] = [None] * len(streams)
    device = model.device
    for start in range(0, len(rows), per_pass):
        chunk = rows[start:start + per_pass]
        batch = collate_rows(streams, chunk, T, model.vocab.pad).to(device)
        logits = model(batch).float()  # (B, T, V)
        labels = batch.labels
        has = labels != IGNORE
        logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]  # (B, T)
        greedy = logits.argmax(-1) == labels
        for r, row in enumerate(chunk):
            for d, i in enumerate(row):
                sel = has[r] & (batch.doc[r] == d)
                if not bool(sel.any()):
                    raise ValueError(f"continuation {continuations[i]!r} has no tokens to score")
                out[i] = (float(logp[r][sel].sum()), bool(greedy[r][sel].all()))
    if was_training:
        model.train()
    return out  # type: ignore[return-value]


def choice_scores(model: "AnyModal", prompts: Sequence[Sequence], choices: Sequence[Sequence[str]],
                  max_tokens: int = 8192) -> list[list[float]]:
    """Log-likelihood of each listed choice (with ``<eos>``) after each prompt: ``scores[i][k]``."""
    flat_p, flat_c = [], []
    for p, cs in zip(prompts, choices):
        for c in cs:
            flat_p.append(p)
            flat_c.append(c)
    lp = continuation_logprobs(model, flat_p, flat_c, add_eos=True, max_tokens=max_tokens)
    out, k = [], 0
    for cs in choices:
        out.append([lp[k + j][0] for j in range(len(cs))])
        k += len(cs)
    return out
