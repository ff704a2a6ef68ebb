"""Training throughput, fp32 on CPU, every comparison side by side in one process.

1. ``vs_hf``: training tokens/s of anymodal against Hugging Face ``LlamaForCausalLM`` of identical
   shape (the ``small`` preset: width 384, 6 layers, 6 heads, 2 KV heads, MLP 1024, the same
   vocabulary), on the same packed rows (documents of 64-512 tokens, rows of 1024). Both get the
   same loss function and AdamW; Llama gets position ids restarting per document, from which
   transformers builds its document mask (for SDPA: a dense (B, 1, T, T) mask). The goal's side
   is anymodal configured as the same function (QK-norm and learned media positions off, 1D
   RoPE; a weight copy checks the logits agree); anymodal's default (QK-norm, M-RoPE) is shown
   too, and Llama with plain causal attention across documents (wrong for packing, its fastest
   path).
2. ``packing``: useful (non-padding) tokens/s, packed rows vs one padded sample per row, on a
   mixed-length interleaved text+image batch (``anymodal.packing.pack`` vs ``pad``).
3. ``mfu``: achieved FLOP/s of a training step (6 N + attention, see ``common.train_flops``)
   over the fp32 matmul peak measured in the same run; and the Lightning step
   (``AnyModalModule`` under ``lightning.Trainer``) against a plain PyTorch loop on the same model.

Run: ``python benchmarks/bench_training.py`` -> benchmarks/results/training.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    QUICK,
    attention_pairs,
    interleaved,
    matmul_params,
    matmul_peak,
    packed_text_batch,
    save,
    text_of,
    train_flops,
)
from peers import copy_to_hf, hf_llama, hf_positions, max_logit_difference

import anymodal as am
from anymodal.model import debug, lm_loss, small
from anymodal.packing import pack, pad

PRESET = debug if QUICK else small
SEQ, ROWS = (256, 2) if QUICK else (1024, 4)


def _adamw(params):
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95))


def anymodal_step(model, batch, backend=None):
    opt = _adamw(model.parameters())

    def step():
        loss, _ = lm_loss(model(batch, backend=backend), batch.labels, batch.loss_weight)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def hf_step(hf, batch, packed_mask: bool):
    opt = _adamw(hf.parameters())
    pos = hf_positions(batch) if packed_mask else None

    def step():
        logits = hf(input_ids=batch.ids, position_ids=pos, use_cache=False).logits
        loss, _ = lm_loss(logits, batch.labels, batch.loss_weight)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def vs_hf(repeats: int) -> dict:
    torch.manual_seed(0)
    # the same function as Llama (checked below: same weights, same logits) ...
    same = am.AnyModal(["text.bytes"], PRESET(qk_norm=False, media_pos_embed=False, rope="rope")).train()
    # ... and the preset as anymodal trains it: + QK-norm (Chameleon) and M-RoPE
    default = am.AnyModal(["text.bytes"], PRESET()).train()
    hf = hf_llama(same.config).train()
    copy_to_hf(same.model, hf)
    batch = packed_text_batch(same, ROWS, SEQ, 64, 512, seed=0)
    tokens = batch.num_real_tokens
    t = interleaved({"anymodal_same_function": anymodal_step(same.model, batch),
                     "anymodal_default": anymodal_step(default.model, batch),
                     "hf_llama_doc_mask": hf_step(hf, batch, packed_mask=True),
                     "hf_llama_causal_no_isolation": hf_step(hf, batch, packed_mask=False)}, repeats)
    tps = {k: tokens / v["best_s"] for k, v in t.items()}
    return {"tokens_per_step": tokens, "rows": ROWS, "seq_len": SEQ, "times": t, "tokens_per_s": tps,
            "anymodal_params": sum(p.numel() for p in same.model.parameters()),
            "anymodal_default_params": sum(p.numel() for p in default.model.parameters()),
            "hf_params": sum(p.numel() for p in hf.parameters()),
            "max_logit_difference_same_weights": max_logit_difference(["text.bytes"], PRESET),
            "ratio_vs_hf_doc_mask": tps["anymodal_same_function"] / tps["hf_llama_doc_mask"],
            "ratio_default_vs_hf_doc_mask": tps["anymodal_default"] / tps["hf_llama_doc_mask"],
            "ratio_vs_hf_causal": tps["anymodal_same_function"] / tps["hf_llama_causal_no_isolation"]}


def interleaved_samples(n: int, seed: int = 0) -> list[list]:
    """Mixed-length interleaved samples: text of 10-600 characters around 0-2 images."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        # long-tailed lengths, like real caption/document mixes: most short, a few long
        sample = [text_of(int(10 + 590 * rng.random() ** 2), rng)]
        for _ in range(rng.randint(0, 2)):
            side = rng.choice([16, 32, 48, 64])
            sample.append(am.Image(torch.rand(3, side, side, generator=g)))
            sample.append(text_of(rng.randint(5, 60), rng))
        out.append(sample)
    return out


def packing(repeats: int) -> dict:
    torch.manual_seed(0)
    toks = ["text.bytes", {"name": "image.patch", "patch_size": 8, "max_tokens": 64}]
    m = am.AnyModal(toks, PRESET()).train()
    streams = [m.builder.build(s) for s in interleaved_samples(8 if QUICK else 16)]
    useful = sum(len(s) for s in streams)
    packed = pack(streams, max(SEQ, max(len(s) for s in streams)), m.vocab.pad)
    padded = pad(streams, m.vocab.pad)
    assert packed.num_real_tokens == padded.num_real_tokens == useful
    t = interleaved({"packed": anymodal_step(m.model, packed), "padded": anymodal_step(m.model, padded)}, repeats)
    tps = {k: useful / v["best_s"] for k, v in t.items()}
    return {"samples": len(streams), "useful_tokens": useful, "lengths": sorted(len(s) for s in streams),
            "packed_shape": list(packed.ids.shape), "padded_shape": list(padded.ids.shape),
            "packed_fill": useful / packed.ids.numel(), "padded_fill": useful / padded.ids.numel(),
            "times": t, "useful_tokens_per_s": tps, "ratio": tps["packed"] / tps["padded"]}


# ---- MFU and Lightning vs a plain loop -------------------------------------------------------------
class _StepClock:
    """Lightning callback: the time between consecutive batch starts (everything a step costs)."""

    def __init__(self):
        self.starts: list[float] = []

    def as_callback(self):
        import lightning as L

        clock = self

        class Clock(L.Callback):
            def on_train_batch_start(self, *a, **k):
                clock.starts.append(time.perf_counter())
        return Clock()


class _Repeat(torch.utils.data.Dataset):
    def __init__(self, batch, n):
        self.batch, self.n = batch, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.batch


def lightning_steps(module, batch, steps: int) -> list[float]:
    import lightning as L

    clock = _StepClock()
    trainer = L.Trainer(max_steps=steps + 1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[clock.as_callback()])
    loader = torch.utils.data.DataLoader(_Repeat(batch, steps + 2), batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, loader)
    return [b - a for a, b in itertools.pairwise(clock.starts)]  # steps - 1 intervals after step 0


def plain_steps(module, batch, steps: int) -> list[float]:
    """The same network, loss, AdamW groups and schedule as ``AnyModalModule``, as a bare loop."""
    hp = module.hparams
    net = module.net
    decay = [p for n, p in net.named_parameters() if p.dim() == 2 and "embed" not in n]
    no_decay = [p for n, p in net.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=hp["lr"], betas=tuple(hp["betas"]))
    warm, total = hp["warmup_steps"], 10_000
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / (total - warm)))))
    net.train()
    starts = []
    for _ in range(steps + 1):
        starts.append(time.perf_counter())
        loss, _ = lm_loss(net(batch), batch.labels, batch.loss_weight, net.config.z_loss)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    starts.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(starts[1:])]  # drop the first (warm-up) step


def mfu(rounds: int, steps: int) -> dict:
    import logging

    from anymodal.train.module import AnyModalModule

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    module = AnyModalModule(tokenizers=["text.bytes"], arch=PRESET(), warmup_steps=10)
    net = module.net
    batch = packed_text_batch(net, ROWS, SEQ, 64, 512, seed=0)
    cfg = net.config
    n_mm = matmul_params(net.model)
    tokens = batch.ids.numel()
    pairs = attention_pairs(batch.doc)
    flops = train_flops(cfg, n_mm, tokens, pairs)
    # the peak is sampled between every block too: MFU divides the best step by the best peak, two
    # estimates of the quiet machine (a peak taken under load from other processes would be low)
    peaks = [matmul_peak()]
    plain, light = [], []
    for _ in range(rounds):  # blocks alternate so that load from other processes hits both
        plain += plain_steps(module, batch, steps)
        peaks.append(matmul_peak())
        light += lightning_steps(module, batch, steps)
        peaks.append(matmul_peak())
    peak = max(peaks)
    best_plain, best_light = min(plain), min(light)
    med_plain, med_light = sorted(plain)[len(plain) // 2], sorted(light)[len(light) // 2]
    return {"params_total": sum(p.numel() for p in net.model.parameters()), "params_matmul": n_mm,
            "tokens_per_step": tokens, "attention_pairs": pairs, "flops_per_step": flops,
            "attention_flop_share": 1 - 6 * n_mm * tokens / flops,
            "matmul_peak_flops": peak, "matmul_peaks_seen": peaks,
            "plain_step_s": plain, "lightning_step_s": light,
            "mfu_plain": flops / best_plain / peak, "mfu_lightning": flops / best_light / peak,
            "mfu_plain_median": flops / med_plain / peak,
            "lightning_over_plain_speed": best_plain / best_light,
            "lightning_over_plain_speed_median": med_plain / med_light}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["vs_hf", "packing", "mfu"])
    ap.add_argument("--repeats", type=int, default=2 if QUICK else 4)
    args = ap.parse_args()
    parts = {"vs_hf": lambda: vs_hf(args.repeats), "packing": lambda: packing(args.repeats),
             "mfu": lambda: mfu(2 if QUICK else 3, 2 if QUICK else 4)}
    result = {}
    for name, run in parts.items():
        if args.only and name != args.only:
            continue
        t = time.perf_counter()
        result[name] = run()
        result[name]["wall_s"] = time.perf_counter() - t
        result[name]["measured"] = {"at": time.strftime("%Y-%m-%d %H:%M"), "load_average": os.getloadavg()}
        print(name, {k: v for k, v in result[name].items() if not isinstance(v, (dict, list))}, flush=True)
    if args.only:  # re-measure one part: keep the others from the last full run
        from common import RESULTS

        last = RESULTS / "training.json"
        if last.is_file():
            old = json.loads(last.read_text())
            result = {**{k: v for k, v in old.items() if k in parts}, **result}
    save("training", result)


if __name__ == "__main__":
    main()
