"""Pretrain a tiny Hugging Face text LM on the synthetic suite's sentences: the "pretrained LM"
that ``recipes/stage1-align.yaml`` and ``recipes/stage2-instruct.yaml`` start from.

No model can be downloaded here, so this stands in for Llama / Qwen2: a byte-level BPE tokenizer
and a small ``Qwen2ForCausalLM`` (or ``LlamaForCausalLM``) trained with ``transformers`` on *text
only*: every caption the caption suite can write ("a red circle at the top left", "three
squares") and every question with each of its answers ("What shape is it? circle"), each once
after a plain-words description of the scene ("red circle top left") and once without. The LM
so knows the language of the tasks and can answer from a description it reads, but has never
seen an image: turning an image into something it can read is what the stages teach (stage 1:
the projector alone, the LM frozen; stage 2: the LM too). Saved with ``save_pretrained``
(config.json + safetensors) and its ``tokenizer.json``, exactly the folder a real LM comes in.

    python scripts/pretrain_tiny_lm.py --out runs/lm            # ~15 s on 2 CPU cores
    anymodal fit --config recipes/stage1-align.yaml               # reads runs/lm
    anymodal fit --config recipes/stage2-instruct.yaml
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import time
from pathlib import Path


def corpus() -> list[tuple[str, str, str]]:
    """(prompt, context, answer) triples: every caption of the caption suite and every answer of
    the image questions, each with a plain-words description of the scene it is about
    (``"red circle top left"``, ``"three squares"``): the context a pretrained LM reads out of."""
    from anymodal.data.synthetic import COLOURS, POSITIONS, SHAPES, TASKS
    from anymodal.data.synthetic.captions import DESCRIBE as PROMPT
    from anymodal.data.synthetic.captions import NUMBER_WORDS, count_caption, scene_caption

    out = []
    for c, s, p in itertools.product(COLOURS, SHAPES, POSITIONS):
        ctx = f"{c} {s} {p}"
        out.append((PROMPT, ctx, scene_caption(c, s, p)))
        out += [(TASKS["image.shape"].question, ctx, s), (TASKS["image.colour"].question, ctx, c),
                (TASKS["image.position"].question, ctx, p)]
    for n, s in itertools.product(range(1, len(NUMBER_WORDS) + 1), SHAPES):
        ctx = count_caption(n, s)
        out += [(PROMPT, ctx, ctx), (TASKS["image.count"].question, ctx, str(n))]
    return out


def build_lm(kind: str, vocab: int, dim: int, layers: int, heads: int, kv_heads: int):
    import transformers

    common = dict(vocab_size=vocab, hidden_size=dim, intermediate_size=int(dim * 8 / 3) // 8 * 8,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  bos_token_id=0, eos_token_id=1, tie_word_embeddings=False, max_position_embeddings=512)
    if kind == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, rope_theta=1_000_000.0))
    if kind == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, rope_theta=500_000.0))
    raise ValueError(f"--kind must be qwen2 or llama, got {kind!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/lm")
    p.add_argument("--kind", default="qwen2", choices=["qwen2", "llama"])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from anymodal.tokenizers.text_hf import train_bpe_tokenizer

    triples = corpus()
    tok = train_bpe_tokenizer([t for triple in triples for t in triple], args.vocab)  # <s> = 0, </s> = 1
    # <s> prompt [context] answer </s>, each part encoded on its own as the stream encodes text
    # segments (the answer starts with "a", not " a"). With the context the LM learns to answer
    # from what it read (in the stages an image takes the context's place); without it, the
    # plain distribution of answers.
    rows = [[0, *tok.encode(q).ids, *(tok.encode(c).ids if with_ctx else []), *tok.encode(a).ids, 1]
            for q, c, a in triples for with_ctx in (True, False)]
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = build_lm(args.kind, tok.get_vocab_size(), args.dim, args.layers, args.heads, args.kv_heads)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    model.train()
    t0 = time.perf_counter()
    for step in range(args.steps):
        batch = [rng.choice(rows) for _ in range(args.batch_size)]
        width = max(map(len, batch))
        ids = torch.tensor([r + [1] * (width - len(r)) for r in batch])
        labels = torch.tensor([r + [-100] * (width - len(r)) for r in batch])
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}")
    model.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.kind} LM, {n / 1e6:.2f}M parameters, {len(rows)} sentences, vocabulary {tok.get_vocab_size()}, "
          f"{time.perf_counter() - t0:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
