"""The ``anymodal`` command. Light commands import nothing heavy; training loads Lightning.

    anymodal fit --config recipes/demo.yaml [--trainer.max_steps=100]
    anymodal validate --config recipes/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt
    anymodal export --ckpt runs/demo/checkpoints/last.ckpt --out runs/demo/export
    anymodal eval --model runs/demo/export --data runs/demo/data --tasks synth,probe --out runs/demo/eval
    anymodal generate --model runs/demo/export --prompt "What shape is it?" --image a.png
    anymodal tokenizers
    anymodal data synth --out runs/demo/data
    anymodal data import --format obelics|mmc4 IN.jsonl OUT.jsonl [--image-root DIR]
    anymodal data shard --manifest runs/demo/data/train.jsonl --out runs/demo/shards --samples-per-shard 1000
"""

from __future__ import annotations

import argparse
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

    optional = {"tasks": args.tasks.split(",") if args.tasks else None, "video_size": args.video_size,
                "video_frames": args.video_frames, "audio_seconds": args.audio_seconds}
    cfg = SynthConfig(train_per_task=args.train, val_per_task=args.val, test_per_task=args.test,
                      image_size=args.image_size, seed=args.seed,
                      **{k: v for k, v in optional.items() if v is not None})
    paths = synthesize(args.out, cfg, force=args.force)
    for split, p in paths.items():
        n = sum(1 for _ in open(p))
        print(f"{split}: {n} samples -> {p}")


def _cmd_import(args) -> None:
    from anymodal.data.importers import import_documents, read_url_map

    url_map = read_url_map(args.url_map) if args.url_map else None
    rep = import_documents(args.input, args.output, args.format, image_root=args.image_root, url_map=url_map,
                           drop_missing=args.drop_missing, strict=args.strict, image_position=args.image_position,
                           min_similarity=args.min_similarity, limit=args.limit)
    print(f"{args.input} -> {args.output}: {rep.summary()}")
    for reason in rep.reasons[:10]:
        print(f"  dropped {reason}")


def _cmd_shard(args) -> None:
    from anymodal.data.shards import write_shards

    rep = write_shards(args.manifest, args.out, args.samples_per_shard, strict=args.strict)
    print(f"{args.manifest} -> {args.out}: {rep.summary()}")
    for reason in rep.reasons[:10]:
        print(f"  skipped {reason}")


def _cmd_export(args) -> None:
    from anymodal.api import AnyModal

    model = AnyModal.load(args.ckpt)
    out = model.export(args.out)
    print(f"exported {args.ckpt} -> {out}")


def _cmd_eval(args) -> None:
    from anymodal.evaluate import TaskContext, evaluate_manifest, format_table, run_tasks, write_report

    if args.list_tasks:
        from anymodal.evaluate.tasks import get_task_spec, list_tasks, task_groups

        groups = task_groups()
        rows = [("task", "kind", "groups", "description")]
        for name in list_tasks():
            spec = get_task_spec(name)
            rows.append((name, spec.kind, ",".join(g for g in groups if g != "all" and name in groups[g]),
                         spec.description))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])
        return
    if not args.model:
        raise ValueError("eval needs --model (an export folder or a .ckpt)")
    if args.manifest and (args.tasks or args.task_file):
        raise ValueError("eval takes either --manifest or --tasks/--task-file, not both")
    if not (args.manifest or args.tasks or args.task_file):
        raise ValueError("eval needs --tasks (see --list-tasks), --task-file or --manifest")
    from anymodal.api import AnyModal

    model = AnyModal.load(args.model)
    if args.manifest:
        report = evaluate_manifest(model, args.manifest, limit=args.limit, batch_size=args.batch_size,
                                   progress=not args.quiet)
    else:
        ctx = TaskContext(data_root=args.data, split=args.split, limit=args.limit, probe_root=args.probe)
        report = run_tasks(model, args.tasks, ctx, task_files=args.task_file or (), batch_size=args.batch_size,
                           progress=not args.quiet)
    print(format_table(report))
    if args.out:
        paths = write_report(report, args.out)
        print(f"wrote {paths['json']}, {paths['md']} and {paths['predictions']}")


def _cmd_generate(args) -> None:
    import anymodal as am

    model = am.AnyModal.load(args.model)
    prompt: list = []
    for kind, value in args.parts:
        prompt.append({"text": am.Text, "image": am.Image, "audio": am.Audio, "video": am.Video}[kind](value))
    out = model.generate(prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, seed=args.seed, guidance=args.guidance)
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
    ev = sub.add_parser("eval", help="score a model on tasks (or a manifest); print and write a table with chance")
    ev.add_argument("--model", default=None, help="export folder or .ckpt")
    ev.add_argument("--tasks", default=None, help="comma-separated task names, groups or globs, e.g. "
                    "synth,pope or 'image.*' (see --list-tasks)")
    ev.add_argument("--task-file", action="append", default=None, help="a JSONL task file (repeatable)")
    ev.add_argument("--manifest", default=None, help="score a manifest's questions, one task per 'task'")
    ev.add_argument("--data", default=None, help="the synthetic suite's folder, for its tasks")
    ev.add_argument("--probe", default=None, help="folder of the hallucination probe (default DATA/probe)")
    ev.add_argument("--split", default="test")
    ev.add_argument("--out", default=None, help="folder for report.json, report.md and predictions.jsonl")
    ev.add_argument("--limit", type=int, default=None, help="examples per task (--manifest: first N records)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument("--list-tasks", action="store_true", help="list the registered tasks and exit")
    g = sub.add_parser("generate", help="continue an interleaved prompt; parts keep their order")
    g.add_argument("--model", required=True)
    for kind in ("prompt", "image", "audio", "video"):
        g.add_argument(f"--{kind}", dest="text" if kind == "prompt" else kind, action=_Part, metavar="X")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale inside spans of media trained with cfg_dropout (1 = off)")
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
    s.add_argument("--tasks", default=None, help="comma-separated task names or groups: image, video, audio, "
                   "cross, all (default: image)")
    s.add_argument("--video-size", type=int, default=None, help="frame side in pixels (default 32)")
    s.add_argument("--video-frames", type=int, default=None, help="frames per clip (default 16)")
    s.add_argument("--audio-seconds", type=float, default=None, help="clip length (default 1.0)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true")
    im = dsub.add_parser("import", help="OBELICS- or MMC4-style documents (JSONL/Parquet) -> an anymodal manifest")
    im.add_argument("--format", required=True, choices=("obelics", "mmc4"))
    im.add_argument("input", help="documents: .jsonl, .jsonl.gz or .parquet (needs pyarrow)")
    im.add_argument("output", help="the manifest to write (.jsonl)")
    im.add_argument("--image-root", default=None, help="folder holding the downloaded images")
    im.add_argument("--url-map", default=None, help="TSV (url<TAB>path) or JSONL ({url, path}) of downloaded images")
    im.add_argument("--drop-missing", action="store_true", help="drop images whose file is not on disk")
    im.add_argument("--strict", action="store_true", help="stop at the first malformed document")
    im.add_argument("--image-position", default="before", choices=("before", "after"),
                    help="MMC4: put an image before (default) or after its matched sentence")
    im.add_argument("--min-similarity", type=float, default=None, help="MMC4: drop images below this matched_sim")
    im.add_argument("--limit", type=int, default=None, help="import only the first N documents")
    sh = dsub.add_parser("shard", help="a manifest -> WebDataset-style tar shards (media bytes inside)")
    sh.add_argument("--manifest", required=True)
    sh.add_argument("--out", required=True, help="folder for shard-NNNNNN.tar and index.json")
    sh.add_argument("--samples-per-shard", type=int, default=1000)
    sh.add_argument("--strict", action="store_true", help="stop at the first unreadable sample")
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
        data_handlers = {"synth": _cmd_synth, "import": _cmd_import, "shard": _cmd_shard}
        if args.data_command not in data_handlers:
            parser.parse_args(["data", "--help"])
        return _guard(lambda: data_handlers[args.data_command](args))
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
    except (MediaError, ManifestError, FileNotFoundError, KeyError, ValueError, TypeError, FloatingPointError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"anymodal: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
