"""The ``anymodal`` command. Light commands import nothing heavy; training loads Lightning.

    anymodal fit --config recipes/demo.yaml [--trainer.max_steps=100]
    anymodal validate --config recipes/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt
    anymodal export --ckpt runs/demo/checkpoints/last.ckpt --out runs/demo/export
    anymodal eval --model runs/demo/export --manifest runs/demo/data/test.jsonl --out runs/demo/eval
    anymodal generate --model runs/demo/export --prompt "What shape is it?" --image a.png
    anymodal tokenizers
    anymodal data synth --out runs/demo/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LIGHTNING_COMMANDS = ("fit", "validate")


def _cmd_tokenizers(args) -> None:
    from anymodal.tokenizers import create_tokenizer, get_tokenizer_class, list_tokenizers

    rows = [("name", "modality", "kind", "vocab/input", "bidirectional")]
    for name in list_tokenizers():
        cls = get_tokenizer_class(name)
        try:
            tok = create_tokenizer(name)
            size = str(tok.vocab_size if tok.kind == "discrete" else tok.input_dim)
        except Exception:  # noqa: BLE001 - needs options (e.g. a vocabulary file)
            size = "(needs options)"
        rows.append((name, cls.modality, cls.kind, size, str(cls.bidirectional).lower()))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _cmd_synth(args) -> None:
    from anymodal.data.synth import SynthConfig, synthesize

    cfg = SynthConfig(train_per_task=args.train, val_per_task=args.val, test_per_task=args.test,
                      image_size=args.image_size, seed=args.seed,
                      **({"tasks": args.tasks.split(",")} if args.tasks else {}))
    paths = synthesize(args.out, cfg, force=args.force)
    for split, p in paths.items():
        n = sum(1 for _ in open(p))
        print(f"{split}: {n} samples -> {p}")


def _cmd_export(args) -> None:
    from anymodal.api import AnyModal

    model = AnyModal.load(args.ckpt)
    out = model.export(args.out)
    print(f"exported {args.ckpt} -> {out}")


def _cmd_eval(args) -> None:
    from anymodal.api import AnyModal
    from anymodal.evaluate import evaluate_manifest, format_table

    model = AnyModal.load(args.model)
    report = evaluate_manifest(model, args.manifest, limit=args.limit, batch_size=args.batch_size,
                               progress=not args.quiet)
    table = format_table(report)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.md").write_text(table + "\n")
        print(f"wrote {out / 'report.json'} and {out / 'report.md'}")


def _cmd_generate(args) -> None:
    import anymodal as am

    model = am.AnyModal.load(args.model)
    prompt: list = []
    for kind, value in args.parts:
        prompt.append({"text": am.Text, "image": am.Image, "audio": am.Audio, "video": am.Video}[kind](value))
    out = model.generate(prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    print(out.text)
    if args.out:
        for i, seg in enumerate(out.segments):
            ext = {"text": "txt", "image": "png", "audio": "wav"}.get(seg.modality, "bin")
            p = seg.save(Path(args.out) / f"{i:02d}_{seg.modality}.{ext}")
            print(f"wrote {p}")


class _Part(argparse.Action):
    """Keeps --prompt/--image/--audio/--video in the order given: the interleaved prompt."""

    def __call__(self, parser, namespace, values, option_string=None):
        parts = getattr(namespace, "parts", None) or []
        parts.append((self.dest, values))
        namespace.parts = parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anymodal", description="Any-to-any early-fusion multimodal models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for c in LIGHTNING_COMMANDS:
        sub.add_parser(c, help=f"LightningCLI {c}: anymodal {c} --config recipes/demo.yaml [--help]",
                       add_help=False)
    sub.add_parser("tokenizers", help="list registered tokenizers (built-in and plugins)")
    ex = sub.add_parser("export", help="checkpoint -> folder with config.json + model.safetensors")
    ex.add_argument("--ckpt", required=True)
    ex.add_argument("--out", required=True)
    ev = sub.add_parser("eval", help="answer a manifest's questions; print and write accuracy vs chance")
    ev.add_argument("--model", required=True, help="export folder or .ckpt")
    ev.add_argument("--manifest", required=True)
    ev.add_argument("--out", default=None, help="folder for report.json and report.md")
    ev.add_argument("--limit", type=int, default=None)
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--quiet", action="store_true")
    g = sub.add_parser("generate", help="continue an interleaved prompt; parts keep their order")
    g.add_argument("--model", required=True)
    for kind in ("prompt", "image", "audio", "video"):
        g.add_argument(f"--{kind}", dest="text" if kind == "prompt" else kind, action=_Part, metavar="X")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--out", default=None, help="folder to write the output segments to")
    g.set_defaults(parts=[])
    d = sub.add_parser("data", help="data tools")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    s = dsub.add_parser("synth", help="write the synthetic task suite (real media files + JSONL)")
    s.add_argument("--out", required=True)
    s.add_argument("--train", type=int, default=1500, help="samples per task")
    s.add_argument("--val", type=int, default=50)
    s.add_argument("--test", type=int, default=100)
    s.add_argument("--image-size", type=int, default=48)
    s.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return _guard(lambda: _lightning(argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"tokenizers": _cmd_tokenizers, "export": _cmd_export, "eval": _cmd_eval,
                "generate": _cmd_generate}
    if args.command == "data":
        if args.data_command != "synth":
            parser.parse_args(["data", "--help"])
        return _guard(lambda: _cmd_synth(args))
    if args.command not in handlers:
        parser.print_help()
        return 0
    return _guard(lambda: handlers[args.command](args))


def _lightning(argv):
    from anymodal.train.cli import run

    run(argv)


def _guard(fn) -> int:
    """Known input errors become one line on stderr (exit 1), not a traceback."""
    from anymodal.errors import ManifestError, MediaError

    try:
        fn()
    except (MediaError, ManifestError, FileNotFoundError, KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"anymodal: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
