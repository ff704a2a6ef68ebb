"""The ``anymodal`` command. Light commands import nothing heavy; training loads Lightning.

    anymodal fit --config recipes/demo.yaml [--trainer.max_steps=100]
    anymodal validate --config recipes/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt
    anymodal export --ckpt runs/demo/checkpoints/last.ckpt --out runs/demo/export
    anymodal eval --model runs/demo/export --data runs/demo/data --tasks synth,probe --out runs/demo/eval
    anymodal generate --model runs/demo/export --prompt "What shape is it?" --image a.png
    anymodal tokenizers
    anymodal doctor                                   # what works here, and how to get what does not
    anymodal serve --model runs/demo/export --port 8000 [--api-key KEY]
    anymodal data synth --out runs/demo/data
    anymodal data import --format obelics|mmc4 IN.jsonl OUT.jsonl [--image-root DIR]
    anymodal data import --format llava|sharegpt|messages IN.json OUT.jsonl --image-root DIR [--video-root DIR]
    anymodal data shard --manifest runs/demo/data/train.jsonl --out runs/demo/shards --samples-per-shard 1000
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

LIGHTNING_COMMANDS = ("fit", "validate")


def _cmd_tokenizers(args) -> None:
    import warnings

    from anymodal.tokenizers import create_tokenizer, get_tokenizer_class, list_tokenizers
    from anymodal.tokenizers.registry import _option_error, tokenizer_clashes, tokenizer_provider

    rows = [("name", "modality", "kind", "vocab/input", "bidirectional", "provided by")]
    clashes = tokenizer_clashes()
    for name in (n for n in list_tokenizers() if n not in clashes):
        cls = get_tokenizer_class(name)
        size = "(needs options)"  # e.g. a vocabulary file
        # learned tokenizers refuse to build without weights; random ones have the same size
        for options in ({}, {"random_init": True}):
            if _option_error(name, cls, options):
                continue
            try:
                with warnings.catch_warnings():  # a dependency's deprecation notice is no news here
                    warnings.simplefilter("ignore")
                    tok = create_tokenizer(name, **options)
            except Exception:  # noqa: BLE001 - try the next options, else "(needs options)"
                continue
            size = str(tok.vocab_size if tok.kind == "discrete" else tok.input_dim)
            break
        rows.append((name, cls.modality, cls.kind, size, str(cls.bidirectional).lower(), str(tokenizer_provider(name))))
    for name, providers in sorted(clashes.items()):  # refused until one provider is uninstalled
        rows.append((name, "-", "-", "-", "-", "CLASH: " + " and ".join(str(p) for p in providers)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _cmd_synth(args) -> None:
    from anymodal.data.synthetic import SynthConfig, synthesize

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
                           min_similarity=args.min_similarity, limit=args.limit, video_root=args.video_root,
                           audio_root=args.audio_root)
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

    model = AnyModal.load(args.ckpt, verify=not args.no_verify)
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
    import warnings

    import anymodal as am

    if not args.parts:
        raise ValueError("generate needs a prompt: --prompt TEXT and/or --image/--audio/--video FILE, in order")
    model = am.AnyModal.load(args.model)
    prompt: list = []
    for kind, value in args.parts:
        prompt.append({"text": am.Text, "image": am.Image, "audio": am.Audio, "video": am.Video}[kind](value))
    with warnings.catch_warnings():  # a cut span is reported below, in one line
        warnings.simplefilter("ignore", UserWarning)
        out = model.generate(prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed, guidance=args.guidance,
                             finish_spans=not args.no_finish_spans)
    if out.text:
        print(out.text)
    if out.truncated is not None:
        print(f"anymodal: warning: {out.truncated}, so it was not decoded: raise --max-new-tokens", file=sys.stderr)
    media = [s for s in out.segments if s.modality != "text"]
    if not args.out:
        if media:
            print(f"{len(media)} {'/'.join(s.modality for s in media)} segment(s) not written: pass --out DIR")
        elif not out.segments:
            print(f"(no output: {_why_empty(model, out)})")
        return
    for i, seg in enumerate(out.segments):
        ext = {"text": "txt", "image": "png", "audio": "wav", "video": "mp4"}.get(seg.modality, "bin")
        p = seg.save(Path(args.out) / f"{i:02d}_{seg.modality}.{ext}")
        print(f"wrote {p}")
    if not out.segments:
        print(f"wrote nothing to {args.out}: {_why_empty(model, out)}")


def _why_empty(model, out) -> str:
    """Why a generation produced no segment, in words."""
    if out.truncated is not None:
        return f"the budget cut a {out.truncated.tokenizer} span (raise --max-new-tokens or drop --no-finish-spans)"
    if out.ids and out.ids[0] == model.vocab.eos:
        return "the model ended its reply at once (<eos> first); try another prompt or --temperature"
    return "the model generated no text or media"


def _cmd_serve(args) -> None:
    import os

    from anymodal.serve import ServeLimits, _need_extra, run_server

    try:
        _need_extra()
    except ImportError as e:  # one line on stderr, like every other input error
        raise ValueError(str(e)) from None
    from anymodal.serve.app import ServeConfig

    name = args.served_model_name or Path(args.model).resolve().name
    if name == "export":  # runs/demo/export -> "demo"
        name = Path(args.model).resolve().parent.name
    key = args.api_key or os.environ.get("ANYMODAL_API_KEY") or None
    cfg = ServeConfig(name=name, api_key=key, max_batch=args.max_batch, max_queue=args.max_queue,
                      queue_timeout=args.queue_timeout, batch_wait=args.batch_wait_ms / 1000)
    limits = ServeLimits(max_body_bytes=int(args.max_body_mb * 2**20), max_media=args.max_media,
                         max_context=args.max_context)
    run_server(args.model, args.host, args.port, cfg, limits, device=args.device)


class _Part(argparse.Action):
    """Keeps --prompt/--image/--audio/--video in the order given: the interleaved prompt."""

    def __call__(self, parser, namespace, values, option_string=None):
        parts = getattr(namespace, "parts", None) or []
        parts.append((self.dest, values))
        namespace.parts = parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anymodal", description="Any-to-any early-fusion multimodal models.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of every error, also of a bad "
                   "input (or set ANYMODAL_DEBUG=1); accepted anywhere on the command line")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for c in LIGHTNING_COMMANDS:
        sub.add_parser(c, help=f"LightningCLI {c}: anymodal {c} --config recipes/demo.yaml (--help: every trainer.*, "
                       "model.* and data.* key)",
                       add_help=False)
    sub.add_parser("tokenizers", help="list registered tokenizers (built-in and plugins)")
    doc = sub.add_parser("doctor", help="what works here: core, video/audio backends, codec weights, attention, "
                         "GPU; for each missing part the reason and how to get it")
    doc.add_argument("--device", default=None, help="check attention backends on this device (default: cpu, and "
                     "cuda when there is a GPU)")
    ex = sub.add_parser("export", help="checkpoint -> folder with config.json + model.safetensors")
    ex.add_argument("--ckpt", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--no-verify", action="store_true",
                    help="skip the checkpoint's SHA-256 check (faster on huge files; a damaged one then loads)")
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
    g.add_argument("--model", required=True, help="export folder or .ckpt")
    for kind in ("prompt", "image", "audio", "video"):
        g.add_argument(f"--{kind}", dest="text" if kind == "prompt" else kind, action=_Part,
                       metavar="TEXT" if kind == "prompt" else "FILE",
                       help="prompt text" if kind == "prompt" else f"{kind} file (repeatable, kept in order)")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help="budget of generated tokens (default: the longest media span the model can "
                   "generate + 64 text tokens; a begun fixed-length span is finished past it)")
    g.add_argument("--no-finish-spans", action="store_true",
                   help="stop at the budget even inside a media span (the cut span is reported, not written)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely ids")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass, in (0, 1]")
    g.add_argument("--seed", type=int, default=None, help="seed of the sampler")
    g.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale inside spans of media trained with cfg_dropout (1 = off)")
    g.add_argument("--out", default=None, help="folder to write the output segments to (PNG, WAV, TXT)")
    g.set_defaults(parts=[])
    sv = sub.add_parser("serve", help="serve a model with the OpenAI chat API (needs the serve extra)")
    sv.add_argument("--model", required=True, help="export folder or .ckpt")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set ANYMODAL_API_KEY)")
    sv.add_argument("--served-model-name", default=None, help="the model id clients send (default: folder name)")
    sv.add_argument("--device", default="cpu")
    sv.add_argument("--max-batch", type=int, default=16, help="requests decoded together")
    sv.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503")
    sv.add_argument("--queue-timeout", type=float, default=30.0, help="seconds a request may wait before 503")
    sv.add_argument("--batch-wait-ms", type=float, default=20.0, help="wait this long for a batch to fill")
    sv.add_argument("--max-context", type=int, default=4096, help="prompt + answer tokens; caps max_tokens")
    sv.add_argument("--max-body-mb", type=float, default=32.0, help="request body size limit")
    sv.add_argument("--max-media", type=int, default=8, help="media parts per request")
    d = sub.add_parser("data", help="data tools")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    s = dsub.add_parser("synth", help="write the synthetic task suite (real media files + JSONL)")
    s.add_argument("--out", required=True)
    s.add_argument("--train", type=int, default=1500, help="samples per task")
    s.add_argument("--val", type=int, default=50)
    s.add_argument("--test", type=int, default=100)
    s.add_argument("--image-size", type=int, default=48)
    s.add_argument("--tasks", default=None, help="comma-separated task names or groups: image, video, audio, "
                   "cross, all, chat (three-turn conversations; default: image)")
    s.add_argument("--video-size", type=int, default=None, help="frame side in pixels (default 32)")
    s.add_argument("--video-frames", type=int, default=None, help="frames per clip (default 16)")
    s.add_argument("--audio-seconds", type=float, default=None, help="clip length (default 1.0)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true")
    im = dsub.add_parser("import", help="OBELICS/MMC4 documents or LLaVA/ShareGPT/messages conversations "
                         "-> an anymodal manifest")
    im.add_argument("--format", required=True, choices=("obelics", "mmc4", "llava", "sharegpt", "messages"))
    im.add_argument("input", help="documents: .jsonl, .jsonl.gz or .parquet (needs pyarrow); conversations: "
                    "a JSON array or JSONL")
    im.add_argument("output", help="the manifest to write (.jsonl)")
    im.add_argument("--image-root", default=None, help="folder holding the downloaded images")
    im.add_argument("--video-root", default=None, help="conversations: folder of relative video paths")
    im.add_argument("--audio-root", default=None, help="conversations: folder of relative audio paths")
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
    # --debug (any position) or ANYMODAL_DEBUG=1: every error shows its traceback
    debug = "--debug" in argv or os.environ.get("ANYMODAL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return _guard(lambda: _lightning(argv), debug)
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"tokenizers": _cmd_tokenizers, "export": _cmd_export, "eval": _cmd_eval,
                "generate": _cmd_generate, "serve": _cmd_serve}
    if args.command == "data":
        data_handlers = {"synth": _cmd_synth, "import": _cmd_import, "shard": _cmd_shard}
        if args.data_command not in data_handlers:
            parser.parse_args(["data", "--help"])
        return _guard(lambda: data_handlers[args.data_command](args), debug)
    if args.command == "doctor":
        from anymodal.doctor import doctor_main

        return _guard(lambda: doctor_main(args), debug)
    if args.command not in handlers:
        parser.print_help()
        return 0
    return _guard(lambda: handlers[args.command](args), debug)


def _lightning(argv):
    from anymodal.train.cli import run

    if "-h" not in argv[1:] and "--help" not in argv[1:]:
        run(argv)
        return
    # LightningCLI's help shows only `--model CONFIG | CLASS_PATH_OR_NAME` for the model and data
    # (subclass mode); follow it with every model.* and data.* key of the default classes
    try:
        run(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    from anymodal.train.recipe_help import recipe_help

    print("\n" + recipe_help(f"anymodal {argv[0]}"))


#: errors that always mean a bad input (config, file, media, manifest), never a bug: one line
_INPUT_ERRORS = ("MediaError", "ManifestError", "FileNotFoundError", "IsADirectoryError", "NotADirectoryError",
                 "PermissionError", "NonFiniteLossError")
#: errors that mean a bad input when anymodal raised them on purpose (a ``raise`` statement in
#: the anymodal package), and a bug anywhere else (``int("x")``, ``d[k]``, a wrong call)
_CHECK_ERRORS = (ValueError, KeyError, TypeError, ImportError, RuntimeError)


def _raised_on_purpose(e: BaseException) -> bool:
    """True when the innermost frame of ``e``'s traceback is a ``raise`` statement of anymodal's
    own code: a check that names the bad input, as opposed to an error from deep inside Python,
    torch or a mistake of ours."""
    import linecache

    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    file = Path(tb.tb_frame.f_code.co_filename).resolve()
    if Path(__file__).resolve().parent not in file.parents:
        return False
    return linecache.getline(str(file), tb.tb_lineno).lstrip().startswith("raise")


def _guard(fn, debug: bool = False) -> int:
    """Run a command. A bad input (config, missing file, bad media, ...) becomes one line on
    stderr and exit status 1; a programming error keeps its full traceback, and so does every
    error with ``--debug`` or ``ANYMODAL_DEBUG=1``."""
    try:
        fn()
    except Exception as e:
        bad_input = None if debug else _bad_input(e)
        if bad_input is None:
            raise
        msg = bad_input.args[0] if isinstance(bad_input, KeyError) and bad_input.args else str(bad_input)
        print(f"anymodal: error: {msg}", file=sys.stderr)
        return 1
    return 0


def _bad_input(e: BaseException) -> BaseException | None:
    """The error that names a bad input, or None for a programming error. Follows ``raise ...
    from``: LightningCLI (jsonargparse) wraps a recipe's error in its own ValueError."""
    chain = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__
    for err in chain:  # the outermost one that qualifies: a wrapper of ours adds context
        names = {c.__name__ for c in type(err).__mro__}
        if names & set(_INPUT_ERRORS) or (isinstance(err, _CHECK_ERRORS) and _raised_on_purpose(err)):
            return err
    return None


if __name__ == "__main__":
    sys.exit(main())
