"""Write benchmarks/RESULTS.md from benchmarks/results/*.json (and ANALYSIS.md, written by hand).

``python benchmarks/report.py`` rewrites RESULTS.md from the last results without re-running.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OWN = {"attention", "training", "decode"}


def _load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def _goal(rows: list, what: str, value: float | None, goal: str, ok: bool | None, unit: str = "x"):
    shown = "n/a" if value is None else (f"{value:.2f}{unit}" if unit else f"{value:.0%}")
    rows.append(f"| {what} | {shown} | {goal} | {'n/a' if ok is None else ('met' if ok else '**missed**')} |")


def _machine(data: dict) -> list[str]:
    m = data["machine"]
    fewer = (" (a `BENCH_THREADS` run with fewer threads than cores: see *Noise* in the analysis)"
             if m["torch_threads"] < (m["logical_cpus"] or 1) else "")
    return [(f"- CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch threads {m['torch_threads']}{fewer}, "
             f"{m.get('memory_gib', '?')} GiB RAM; {m['platform']}"),
            (f"- Python {m['python']}, torch {m['torch']}, transformers {m.get('transformers')}, "
             f"lightning {m.get('lightning')}, xformers {m.get('xformers')} (GPU: {m.get('cuda') or 'none'})")]


def _attention_section(att: dict, title: str) -> list[str]:
    out = []
    s = att["shape"]
    out += [title, "",
            (f"{s['heads']} query heads, {s['kv_heads']} KV heads, head_dim {s['head_dim']}, {s['dtype']}; "
            "one packed row. `lower_bound`: the documents as one padding-free batch (equal lengths) or each "
            "alone (mixed), laid out beforehand. `varlen`/`sdpa`/`eager` build their mask or plan on every call."),
            "", "| case | backend | fwd+bwd ms (best) | median |", "|---|---|---|---|"]
    for case in ("train_equal", "train_mixed"):
        c = att[case]
        label = f"{len(c['lengths'])} docs, T={c['T']}" + (" (equal)" if case == "train_equal" else " (mixed)")
        for k, v in c["times"].items():
            out.append(f"| {label} | {k} | {_ms(v['best_s'])} | {_ms(v['median_s'])} |")
    inf = att["inference_equal"]
    out += ["", "Inference (forward only, no grad), 8 x 256:", "",
            "| backend | fwd ms (best) |", "|---|---|"]
    for k, v in inf["times"].items():
        out.append(f"| {k} | {_ms(v['best_s'])} |")
    out += ["", (f"`flex` first call (compilation): {inf['flex_first_call_s']:.1f} s; flex / varlen = "
            f"{inf['flex_over_varlen']:.2f}x building the mask each call, "
            f"{inf.get('flex_over_varlen_reused_mask', float('nan')):.2f}x with it built once (`+reused_mask`: "
            "as the layers of one forward share it)."), "",
            f"Peak memory of one forward + backward, MiB, documents of 256. Method: {att['memory_method']}.", ""]
    mem = att["memory"]
    Ts = sorted({r["T"] for r in mem})
    bks = list(dict.fromkeys(r["backend"] for r in mem))
    out += ["| T | " + " | ".join(bks) + " |", "|---|" + "---|" * len(bks)]
    for T in Ts:
        cells = []
        for b in bks:
            r = next((r for r in mem if r["T"] == T and r["backend"] == b), None)
            cells.append("skipped" if r is None or r.get("peak_extra_mib") is None else
                         f"{r['peak_extra_mib']:.0f} ({r['seconds']:.2f} s)")
        out.append(f"| {T} | " + " | ".join(cells) + " |")
    out += ["", ("(seconds: that one call, in its fresh process.) `eager` stops at 4096: its (H, T, T) scores "
            "and their gradients would need several GiB beyond."), ""]
    return out


def write_results() -> Path:
    att, tr, dec = _load("attention"), _load("training"), _load("decode")
    run = _load("run") or {}  # written by run_all.py: wall time per script
    total_s, walls, failed = run.get("total_s"), run.get("walls"), run.get("failed")
    first = next((d for d in (att, tr, dec) if d), None)
    out = ["# Benchmark results", "",
           "Written by `make bench` (benchmarks/run_all.py -> report.py); raw numbers in benchmarks/results/*.json.",
           "fp32 on CPU. Every comparison runs its sides in one process, interleaved round-robin after a warm-up;",
           "ratios use each side's best time (medians are in the JSON).", ""]
    if first is None:
        out.append("No results yet: run `make bench`.")
    else:
        out += ["## Machine", ""] + _machine(first)
        loads = {n: "/".join(f"{x:.1f}" for x in d["machine"]["load_average"])
                 for n, d in (("attention", att), ("training", tr), ("decode", dec))
                 if d and d["machine"].get("load_average")}
        out.append("- load average (1/5/15 min) when each benchmark finished: "
                   + ", ".join(f"{k} {v}" for k, v in loads.items())
                   + f". Above {first['machine']['logical_cpus']}, other processes shared the cores: absolute "
                   "numbers are then low and noisy, the interleaved ratios steadier (see the analysis below).")
        out.append(f"- written {time.strftime('%Y-%m-%d %H:%M')}" + (f"; all benchmarks took {total_s / 60:.1f} min"
                                                                    if total_s else ""))
        if walls:
            out.append("- per script: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()))
        if failed:
            out.append(f"- **failed**: {', '.join(failed)}")
        if any(d and d.get("quick") for d in (att, tr, dec)):
            out.append("- **BENCH_QUICK=1 run: tiny shapes, the numbers below mean nothing.**")
        out.append("")

    goals = ["## Goals", "", "| measurement | result | goal | |", "|---|---|---|---|"]
    if tr and "vs_hf" in tr:
        r = tr["vs_hf"]["ratio_vs_hf_doc_mask"]
        _goal(goals, "training tokens/s, anymodal / HF Llama (same shape, same packed rows)", r, ">= 1.3x", r >= 1.3)
    if tr and "packing" in tr:
        r = tr["packing"]["ratio"]
        _goal(goals, "useful tokens/s, packed / padded (mixed-length interleaved)", r, ">= 2x", r >= 2)
    if att:
        e = att["train_equal"]
        _goal(goals, "doc-masked attention fwd+bwd, varlen / lower bound (8 x 256)", e["varlen_over_lower_bound"],
              "<= 1.2x", e["varlen_over_lower_bound"] <= 1.2)
        _goal(goals, "doc-masked attention fwd+bwd, dense sdpa / varlen (8 x 256)", e["dense_over_varlen"], ">= 4x",
              e["dense_over_varlen"] >= 4)
    if tr and "mfu" in tr:
        m = tr["mfu"]
        _goal(goals, "MFU of a training step (plain loop), small preset", m["mfu_plain"], ">= 70%",
              m["mfu_plain"] >= 0.7, unit="")
        _goal(goals, "MFU of a training step (Lightning)", m["mfu_lightning"], ">= 70%", m["mfu_lightning"] >= 0.7,
              unit="")
        _goal(goals, "Lightning step speed / plain PyTorch loop", m["lightning_over_plain_speed"], ">= 0.95x",
              m["lightning_over_plain_speed"] >= 0.95)
    if dec:
        _goal(goals, f"decoding tokens/s, KV cache / no cache at {dec['context']} context (steady)",
              dec["cache_speedup_steady"], ">= 10x", dec["cache_speedup_steady"] >= 10)
        _goal(goals, "... end to end (prefill included)", dec["cache_speedup_end_to_end"], ">= 10x",
              dec["cache_speedup_end_to_end"] >= 10)
        _goal(goals, "decoding tokens/s, anymodal / HF generate (steady)", dec["vs_hf_steady"], ">= 1.0x",
              dec["vs_hf_steady"] >= 1.0)
        _goal(goals, "... end to end (prefill included)", dec["vs_hf_end_to_end"], ">= 1.0x",
              dec["vs_hf_end_to_end"] >= 1.0)
    out += goals + [""]

    if tr and "vs_hf" in tr:
        r = tr["vs_hf"]
        out += ["## Training throughput vs Hugging Face Llama", "",
                (f"small preset, {r['rows']} rows x {r['seq_len']} tokens of packed documents (64-512 tokens), "
                "forward + backward + AdamW, same loss. `anymodal_same_function`: QK-norm and learned media "
                f"positions off, 1D RoPE ({r['anymodal_params'] / 1e6:.2f} M parameters, Llama "
                f"{r['hf_params'] / 1e6:.2f} M); with Llama's weights copied in, the logits agree to "
                f"{r['max_logit_difference_same_weights']:.1e}. `anymodal_default`: the preset as it trains "
                f"(QK-norm, M-RoPE, media positions; {r['anymodal_default_params'] / 1e6:.2f} M): "
                f"{r['ratio_default_vs_hf_doc_mask']:.2f}x Llama."), "",
                "| side | step (ms, best) | median | tokens/s |", "|---|---|---|---|"]
        for k, v in r["times"].items():
            out.append(f"| {k} | {_ms(v['best_s'])} | {_ms(v['median_s'])} | {r['tokens_per_s'][k]:.0f} |")
        out += ["", ("`hf_llama_doc_mask`: position ids restart per document, transformers builds the document mask "
                "(dense for SDPA). `hf_llama_causal_no_isolation`: no position ids, documents see each other "
                "(wrong for packing; its fastest path), for reference."), ""]
    if tr and "packing" in tr:
        p = tr["packing"]
        out += ["## Packing vs padding", "",
                (f"{p['samples']} interleaved text+image samples, {p['useful_tokens']} useful tokens, lengths "
                f"{p['lengths'][0]}-{p['lengths'][-1]}. Packed {p['packed_shape']} ({p['packed_fill']:.0%} filled) vs "
                f"padded {p['padded_shape']} ({p['padded_fill']:.0%} filled)."), "",
                "| layout | step (ms, best) | useful tokens/s |", "|---|---|---|"]
        for k, v in p["times"].items():
            out.append(f"| {k} | {_ms(v['best_s'])} | {p['useful_tokens_per_s'][k]:.0f} |")
        out.append("")
    if att:
        out += _attention_section(att, "## Document-masked attention")
    att_cuda = _load("attention_cuda")
    if att_cuda:
        out += _attention_section(att_cuda, f"## Document-masked attention on {att_cuda['machine'].get('cuda')}")
    if tr and "mfu" in tr:
        m = tr["mfu"]
        out += ["## Model FLOPs utilisation and Lightning overhead", "",
                (f"small preset, {m['params_matmul'] / 1e6:.2f} M matmul parameters (N: every Linear weight incl. the "
                f"LM head; embeddings are lookups), {m['tokens_per_step']} tokens per step. FLOPs per step = 6 N "
                "tokens + 12 * head_dim * heads * layers * (causal same-document query-key pairs) "
                f"= {m['flops_per_step'] / 1e9:.1f} GFLOP (attention {m['attention_flop_share']:.0%}). "
                f"fp32 matmul peak: best 2048^3 GEMM in the same run, {m['matmul_peak_flops'] / 1e9:.0f} GFLOP/s "
                f"(seen: {', '.join(f'{x / 1e9:.0f}' for x in m['matmul_peaks_seen'])})."), "",
                "| loop | step ms (best) | median | MFU (best) |", "|---|---|---|---|"]
        for k, key in (("plain PyTorch", "plain_step_s"), ("Lightning", "lightning_step_s")):
            xs = sorted(m[key])
            mfu = m["flops_per_step"] / xs[0] / m["matmul_peak_flops"]
            out.append(f"| {k} | {_ms(xs[0])} | {_ms(xs[len(xs) // 2])} | {mfu:.0%} |")
        out.append("")
    if dec:
        out += ["## Decoding", "",
                (f"small preset, batch 1, {dec['context']}-token prompt, {dec['new_tokens']} greedy new tokens. "
                "Steady rate = (N - 1) / (t(N) - t(1)). `cached`/`uncached`: anymodal as the same function as the "
                "Llama (its weights copied into `hf`), KV cache on/off; `default`: the preset with QK-norm and "
                f"M-RoPE, cached. Same ids cached vs uncached: {dec['cached_equals_uncached_ids']}; same ids as "
                f"HF generate: {dec.get('same_ids_as_hf')}."), "",
                "| side | end-to-end tokens/s | steady tokens/s |", "|---|---|---|"]
        for k in ("cached", "uncached", "hf", "default"):
            out.append(f"| {k} | {dec['tokens_per_s_end_to_end'][k]:.1f} | {dec['tokens_per_s_steady'][k]:.1f} |")
        out.append("")
    for md in sorted(RESULTS.glob("*.md")):  # fragments other benchmarks write (e.g. bench_media.py)
        text = md.read_text().rstrip()
        if not text.startswith("#"):
            text = f"## {md.stem} (benchmarks/results/{md.name})\n\n{text}"
        out += [text, ""]
    analysis = HERE / "ANALYSIS.md"
    if analysis.is_file():
        out += [analysis.read_text().rstrip(), ""]
    path = HERE / "RESULTS.md"
    path.write_text("\n".join(out))
    return path


if __name__ == "__main__":
    print(write_results())
