"""Document-masked attention: ``varlen`` vs ``sdpa`` with a dense mask vs the lower bound.

A packed row of T tokens holds several documents; the rule lets a token see only its own
document, causally. The *lower bound* is the same documents given as one padding-free batch
(n, H, L, hd) to SDPA's causal kernel: what an ideal varlen kernel costs, with no packing work.

1. Time, forward + backward, the small preset's attention shape (6 query heads, 2 KV heads,
   head_dim 64): 8 documents of 256 in one 2048-token row (the issue's case) and documents of
   mixed lengths (lower bound there: each document alone).
2. Time, forward only (inference): the same plus compiled ``flex`` (compilation timed apart).
3. Peak memory of one forward + backward against T = 1k ... 16k (documents of 256), per backend,
   each point in a fresh process. CPU: the growth of peak resident memory (``VmHWM`` after
   resetting it through ``/proc/self/clear_refs``) over the resident memory just before the
   call. CUDA: ``torch.cuda.max_memory_allocated`` over the allocation before the call.

CPU runs fp32 (bf16 matmul is ~100x slower on this CPU). ``--device cuda`` runs bf16 and adds
``flex`` and ``xformers`` to the training comparison (where they load).

Run: ``python benchmarks/bench_attention.py [--device cuda]`` -> benchmarks/results/attention[_cuda].json
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK, interleaved, save

from anymodal.model.attention import MaskInfo, attention, backend_support

H, HKV, HD = 6, 2, 64
DOC = 64 if QUICK else 256
T_MAIN = 8 * DOC
MEM_T = [512, 1024] if QUICK else [1024, 2048, 4096, 8192, 16384]
EAGER_MAX_T = 1024 if QUICK else 4096  # eager's (H, T, T) fp32 scores: 1.6 GB at 8k with its backward copies x4
DEVICE = torch.device("cpu")
DTYPE = torch.float32


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def qkv(T: int, grad: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, T, HD, generator=g)
    k, v = torch.randn(1, HKV, T, HD, generator=g), torch.randn(1, HKV, T, HD, generator=g)
    return [t.to(DEVICE, DTYPE).requires_grad_(grad) for t in (q, k, v)]


def doc_ids(lengths: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None].to(DEVICE)  # (1, T)


def backend_call(name: str, q, k, v, doc: torch.Tensor):
    """One attention call; a fresh MaskInfo each time, so mask/plan building is paid every call
    (in the model it is paid once per forward and shared by the layers: this is pessimistic)."""
    z = torch.zeros_like(doc)
    return attention(q, k, v, MaskInfo.from_batch(doc, z, z.bool()), name)


def split_docs(t: torch.Tensor, lengths: list[int]):
    """(1, h, T, hd) -> documents as contiguous tensors: equal lengths stack into one batch."""
    if len(set(lengths)) == 1:
        n, L = len(lengths), lengths[0]
        return [t.detach()[0].view(t.shape[1], n, L, HD).transpose(0, 1).contiguous().requires_grad_(t.requires_grad)]
    return [p.detach().contiguous().requires_grad_(t.requires_grad) for p in t.split(lengths, dim=2)]


def fwd_bwd(name, T, lengths, doc, grad=True):
    q, k, v = qkv(T, grad)
    if name == "lower_bound":  # inputs laid out per document beforehand: the layout is free for it
        parts = [split_docs(t, lengths) for t in (q, k, v)]

        def run():
            outs = [F.scaled_dot_product_attention(a, b, c, is_causal=True, enable_gqa=True) for a, b, c in zip(*parts)]
            if grad:
                sum(o.float().sum() for o in outs).backward()
            sync()
        return run

    if name.endswith("+reused_mask"):  # the mask/plan built once, as the layers of one forward share it
        z = torch.zeros_like(doc)
        mask, name = MaskInfo.from_batch(doc, z, z.bool()), name.split("+")[0]

        def run():
            attention(q, k, v, mask, name)
            sync()
        return run

    def run():
        out = backend_call(name, q, k, v, doc)
        if grad:
            out.float().sum().backward()
        sync()
    return run


def timing(lengths: list[int], backends: list[str], grad: bool, repeats: int) -> dict:
    T = sum(lengths)
    doc = doc_ids(lengths)
    fns = {b: fwd_bwd(b, T, lengths, doc, grad) for b in backends}
    if grad:
        return interleaved(fns, repeats)
    with torch.no_grad():
        return interleaved(fns, repeats)


def mixed_lengths(T: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    out, free = [], T
    while free:
        n = min(free, rng.randint(DOC // 8, 2 * DOC))
        out.append(n)
        free -= n
    return out


def runnable(names: list[str], training: bool) -> list[str]:
    return [b for b in names if b == "lower_bound" or backend_support(b, DEVICE, training) is None]


# ---- memory: one point per fresh process -----------------------------------------------------------
def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_point(backend: str, T: int) -> dict:
    lengths = [DOC] * (T // DOC)
    fwd_bwd(backend, 8 * 32, [32] * 8, doc_ids([32] * 8))()  # warm-up: thread pools, kernels, lazy imports
    run = fwd_bwd(backend, T, lengths, doc_ids(lengths))
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
        base = _status("VmRSS")
    t = time.perf_counter()
    run()
    peak = torch.cuda.max_memory_allocated() if DEVICE.type == "cuda" else _status("VmHWM")
    return {"backend": backend, "T": T, "peak_extra_mib": (peak - base) / 2**20, "seconds": time.perf_counter() - t}


def memory_sweep(backends: list[str]) -> list[dict]:
    rows = []
    for T in MEM_T:
        for b in backends:
            if b == "eager" and T > EAGER_MAX_T:
                rows.append({"backend": b, "T": T, "peak_extra_mib": None,
                             "skipped": f"T > {EAGER_MAX_T}: eager materialises (H, T, T) scores and their grads"})
                continue
            p = subprocess.run([sys.executable, __file__, "--device", DEVICE.type, "--memory-point", b, str(T)],
                               capture_output=True, text=True, timeout=900, check=False)
            if p.returncode:
                rows.append({"backend": b, "T": T, "peak_extra_mib": None, "error": p.stderr[-400:]})
            else:
                rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    return rows


def main():
    global DEVICE, DTYPE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--memory-point", nargs=2, metavar=("BACKEND", "T"))
    ap.add_argument("--repeats", type=int, default=3 if QUICK else 7)
    args = ap.parse_args()
    DEVICE = torch.device(args.device)
    DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
    if args.memory_point:
        print(json.dumps(memory_point(args.memory_point[0], int(args.memory_point[1]))))
        return

    result = {"device": args.device, "shape": {"heads": H, "kv_heads": HKV, "head_dim": HD, "dtype": str(DTYPE)}}
    equal = [DOC] * (T_MAIN // DOC)
    mixed = mixed_lengths(T_MAIN)
    train_b = runnable(["varlen", "sdpa", "lower_bound", "eager", "flex", "xformers"], training=True)
    for case, lengths in (("equal", equal), ("mixed", mixed)):
        t = timing(lengths, train_b, grad=True, repeats=args.repeats)
        lb, vl, dn = (t[b]["best_s"] for b in ("lower_bound", "varlen", "sdpa"))
        result[f"train_{case}"] = {"lengths": lengths, "T": sum(lengths), "times": t,
                                   "varlen_over_lower_bound": vl / lb, "dense_over_varlen": dn / vl}
        print(case, "fwd+bwd", {k: round(v["best_s"] * 1e3, 1) for k, v in t.items()},
              f"varlen/LB {vl / lb:.2f}x, dense/varlen {dn / vl:.2f}x", flush=True)

    # inference: flex joins (compile once, timed apart)
    q, k, v = qkv(T_MAIN, False)
    doc = doc_ids(equal)
    z = torch.zeros_like(doc)
    with torch.no_grad():
        t0 = time.perf_counter()
        attention(q, k, v, MaskInfo.from_batch(doc, z, z.bool()), "flex")
        sync()
        compile_s = time.perf_counter() - t0
    t = timing(equal, runnable(["varlen", "sdpa", "flex", "xformers", "lower_bound"], training=False)
               + ["varlen+reused_mask", "flex+reused_mask"], grad=False, repeats=args.repeats)
    result["inference_equal"] = {"lengths": equal, "times": t, "flex_first_call_s": compile_s,
                                 "flex_over_varlen": t["flex"]["best_s"] / t["varlen"]["best_s"],
                                 "flex_over_varlen_reused_mask": (t["flex+reused_mask"]["best_s"]
                                                                  / t["varlen+reused_mask"]["best_s"]),
                                 "varlen_over_lower_bound": t["varlen"]["best_s"] / t["lower_bound"]["best_s"]}
    print("inference", {k: round(v["best_s"] * 1e3, 1) for k, v in t.items()}, f"flex compile {compile_s:.1f}s",
          flush=True)

    result["memory"] = memory_sweep(runnable(["eager", "sdpa", "varlen", "lower_bound", "flex", "xformers"],
                                             training=True))
    result["memory_method"] = (
        "torch.cuda.max_memory_allocated minus the allocation before the call" if DEVICE.type == "cuda" else
        "peak resident memory growth (VmHWM reset via /proc/self/clear_refs, minus VmRSS before the call)"
    ) + " of one forward+backward, fresh process per point"
    save("attention" if DEVICE.type == "cpu" else "attention_cuda", result)


if __name__ == "__main__":
    main()
