"""Decoding tokens/s at a 1k-token context: KV cache vs recomputing the whole sequence each step,
and anymodal vs Hugging Face ``generate`` on a ``LlamaForCausalLM`` of the same shape.

Greedy decoding of a fixed number of new tokens (no early stop) after a 1000-token text prompt,
batch 1, fp32, the ``small`` preset configured as the same function as the Llama (QK-norm and
media positions off, 1D RoPE; the Llama holds a copy of its weights and must generate the same
ids), plus the preset's default (QK-norm, M-RoPE) for reference. Two rates per side: end to end
(prefill included) and the steady decoding rate, ``(N - 1) / (t(N) - t(1))``: the per-token
cost once the prompt is read (t(1) is a call that generates one token: prefill plus one
sampling).

Run: ``python benchmarks/bench_decode.py`` -> benchmarks/results/decode.json
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK, interleaved, save, text_of
from peers import copy_to_hf, hf_llama

import anymodal as am
from anymodal.model import debug, small

PRESET = debug if QUICK else small
CONTEXT = 200 if QUICK else 1000
NEW = 8 if QUICK else 64


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2 if QUICK else 3)
    args = ap.parse_args()
    torch.manual_seed(0)
    # the same function as the Llama (its weights copied in): the goal's comparison ...
    m = am.AnyModal(["text.bytes"], PRESET(qk_norm=False, media_pos_embed=False, rope="rope")).eval()
    hf = hf_llama(m.config).eval()
    copy_to_hf(m.model, hf)
    # ... and the preset as anymodal trains it (QK-norm, M-RoPE), for reference
    default = am.AnyModal(["text.bytes"], PRESET()).eval()
    prompt = text_of(CONTEXT - 1, random.Random(0))  # + <bos> = CONTEXT tokens
    ids = m.builder.build([prompt], add_eos=False).ids[None]  # (1, CONTEXT)
    assert ids.shape[1] == CONTEXT, ids.shape

    def ours(n, cache=True, model=m):
        return lambda: model.generate(prompt, max_new_tokens=n, stop_at_eos=False, use_cache=cache)

    def theirs(n):
        return lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, use_cache=True, pad_token_id=0)

    out = ours(NEW)().ids
    same = out == ours(NEW, cache=False)().ids
    same_as_hf = out == theirs(NEW)()[0, CONTEXT:].tolist()
    with torch.no_grad():
        t = interleaved({"cached": ours(NEW), "cached_1": ours(1), "hf": theirs(NEW), "hf_1": theirs(1),
                         "default": ours(NEW, model=default), "default_1": ours(1, model=default),
                         "uncached": ours(NEW, cache=False), "uncached_1": ours(1, cache=False)}, args.repeats)
    best = {k: v["best_s"] for k, v in t.items()}
    sides = ("cached", "hf", "default", "uncached")
    e2e = {k: NEW / best[k] for k in sides}
    steady = {k: (NEW - 1) / max(best[k] - best[k + "_1"], 1e-9) for k in sides}
    save("decode", {
        "context": CONTEXT, "new_tokens": NEW, "params": sum(p.numel() for p in m.model.parameters()),
        "cached_equals_uncached_ids": same, "same_ids_as_hf": same_as_hf, "times": t,
        "tokens_per_s_end_to_end": e2e, "tokens_per_s_steady": steady,
        "cache_speedup_end_to_end": e2e["cached"] / e2e["uncached"],
        "cache_speedup_steady": steady["cached"] / steady["uncached"],
        "vs_hf_end_to_end": e2e["cached"] / e2e["hf"], "vs_hf_steady": steady["cached"] / steady["hf"],
    })
    print({k: round(v, 1) for k, v in e2e.items()}, {k: round(v, 1) for k, v in steady.items()})


if __name__ == "__main__":
    main()
