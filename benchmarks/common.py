"""Shared helpers of the benchmark scripts: the machine, fair timing, the fp32 matmul peak, data,
FLOP counts and result files.

Fair timing: the sides of a comparison run in one process, interleaved round-robin after a
warm-up (A B A B ...), so a burst of load from other processes hits both; the ratio is taken
from each side's best (minimum) time, the usual estimate of what the code can do when the
machine is quiet, and the medians are kept in the JSON next to it.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
THREADS = int(os.environ.get("BENCH_THREADS", min(2, os.cpu_count() or 1)))
QUICK = os.environ.get("BENCH_QUICK") == "1"  # tiny shapes: checks that the scripts run, numbers mean nothing

torch.set_num_threads(THREADS)
if str(HERE.parent) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(HERE.parent))


def machine() -> dict:
    """What the numbers came from."""
    from anymodal.doctor import cpu_model

    info = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    try:
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    for pkg in ("transformers", "lightning", "xformers"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - not installed
            info[pkg] = None
    return info


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Run each function ``warmup`` times, then ``repeats`` rounds of A B C ...; seconds per call."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: {"best_s": min(v), "median_s": statistics.median(v), "all_s": [round(x, 5) for x in v]}
            for k, v in times.items()}


def matmul_peak(n: int = 2048, repeats: int = 8) -> float:
    """Best fp32 GEMM rate (FLOP/s) on an n x n x n product: the denominator of MFU."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


# ---- data ----------------------------------------------------------------------------------------
WORDS = ["the", "a", "red", "blue", "green", "circle", "square", "triangle", "moves", "left", "right", "up", "down", "beeps", "twice", "once", "image", "audio", "video", "shows", "how", "many", "what", "colour", "is", "there", "answer", "yes", "no"]


def text_of(n_chars: int, rng: random.Random) -> str:
    out, size = [], 0
    while size <= n_chars:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n_chars]


def text_streams(model, lengths: list[int], seed: int = 0):
    """One text stream per length (text.bytes: ~1 token per character, plus <bos>/<eos>)."""
    rng = random.Random(seed)
    return [model.builder.build([text_of(max(1, n - 2), rng)]) for n in lengths]


def packed_text_batch(model, rows: int, seq_len: int, lo: int, hi: int, seed: int = 0):
    """``rows`` rows of ``seq_len`` filled with documents of random lengths in [lo, hi]."""
    from anymodal.packing import collate_rows

    rng = random.Random(seed)
    lengths, plan = [], []
    for _ in range(rows):
        row, free = [], seq_len
        while free > 0:
            n = rng.randint(lo, hi)
            if free - n < lo:  # the last document takes the rest of the row: no padding
                n = free
            row.append(len(lengths))
            lengths.append(n)
            free -= n
        plan.append(row)
    streams = text_streams(model, lengths, seed)
    return collate_rows(streams, plan, seq_len, model.vocab.pad)


# ---- FLOPs ---------------------------------------------------------------------------------------
def matmul_params(model) -> int:
    """Parameters that multiply activations (every Linear weight, the LM head included); embedding
    tables are lookups and norms are elementwise, so neither counts (Kaplan et al. 2020's N)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def attention_pairs(doc: torch.Tensor) -> int:
    """Causal (query, key) pairs inside documents: sum over documents of n (n + 1) / 2."""
    total = 0
    for row in doc:
        change = torch.nonzero(row[1:] != row[:-1]).flatten() + 1
        bounds = [0, *change.tolist(), row.numel()]
        total += sum((e - s) * (e - s + 1) // 2 for s, e in itertools.pairwise(bounds))
    return total


def train_flops(model_cfg, n_matmul: int, tokens: int, pairs: int) -> float:
    """FLOPs of one training step: 6 N per token (forward 2N, backward 4N) plus attention's
    QK^T and PV, 2 * 2 * head_dim * heads per (query, key) pair forward, 3x that with backward
    (PaLM appendix B), counting only the pairs the mask allows (causal, same document)."""
    attn = 3 * 4 * model_cfg.head_dim * model_cfg.n_heads * model_cfg.n_layers * pairs
    return 6 * n_matmul * tokens + attn


# ---- results -------------------------------------------------------------------------------------
def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    data = {"benchmark": name, "machine": machine(), "quick": QUICK, **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {path}")
    return path


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"
