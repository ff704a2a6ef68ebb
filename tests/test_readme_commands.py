"""Every `anymodal ...` line of the README's bash blocks runs, at tiny size, as its Python blocks do
in tests/test_docs.py; so do the docs pages' lines, except those in ``LEFT_OUT`` (each with its
reason). In page order (README first), in one scratch folder that holds `recipes/` (so the
relative paths hold), each line through the real command-line entry point
(:func:`anymodal.cli.main`, what the `anymodal` console script calls; in-process, because a fresh
interpreter per line costs ~10-30 s of imports on a busy 2-core machine). Each line gets the
small overrides listed in ``TINY`` (fewer steps, samples and layers), then must exit 0, leave the
files it says it writes and print what it says it prints.

A line that matches neither ``TINY`` nor ``LEFT_OUT`` fails ``test_every_shell_command_is_covered``
(every README line must be in ``TINY``). Not `anymodal` lines, so not here: ``make test`` and
``make demo`` (CI runs them)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shlex
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field

import pytest
from conftest import ROOT

TINY_ARCH = ["--model.arch.dim=32", "--model.arch.n_layers=1", "--model.arch.n_heads=2", "--model.arch.n_kv_heads=1"]
DEMO_TINY = ["--data.synthetic.train_per_task=4", "--data.synthetic.val_per_task=2",
             "--data.synthetic.test_per_task=2", "--data.batch_size=4", "--model.val_generate=2", *TINY_ARCH]
TRAIN_TINY = ["--trainer.max_steps=2", "--trainer.val_check_interval=2"]


@dataclass
class Tiny:
    """How one command line runs at tiny size: ``args`` appended (later flags win), ``writes``
    (paths or globs relative to the folder that must exist afterwards), ``prints`` (a regex its
    output must match), ``needs`` (an optional module it needs; skipped without it)."""

    args: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    prints: str = ""
    needs: str | None = None


#: a command line (``anymodal`` and its comment cut), matched from its start by a regex -> how it runs tiny
TINY: dict[str, Tiny] = {
    r"fit --config recipes/demo\.yaml --print_config '>' my-recipe\.yaml": Tiny(writes=["my-recipe.yaml"]),
    r"fit --config recipes/demo\.yaml --print_config": Tiny(prints=r"seed_everything: 0"),
    r"fit --config recipes/demo\.yaml": Tiny(
        [*DEMO_TINY, *TRAIN_TINY],
        ["runs/demo/checkpoints/last.ckpt", "runs/demo/data/train.jsonl", "runs/demo/data/test.jsonl",
         "runs/demo/csv/metrics.csv", "runs/demo/tensorboard/events.out.tfevents.*"]),
    r"fit --help$": Tiny(prints=r"--trainer\.max_steps"),
    r"validate --config recipes/demo\.yaml --ckpt_path runs/demo/checkpoints/last\.ckpt": Tiny(
        DEMO_TINY, prints=r"val/loss"),
    r"tokenizers$": Tiny(prints=r"image\.fsq\s+image\s+discrete"),
    r"doctor$": Tiny(prints=r"(?s)core\n\s+ok\s+python .*video\n.*(ok|--)\s+decord"),
    r"data synth --out runs/data --tasks all": Tiny(
        ["--train", "1", "--val", "1", "--test", "1"], ["runs/data/train.jsonl", "runs/data/test.jsonl"]),
    r"data synth --out data ": Tiny(["--train", "1", "--val", "1", "--test", "1"], ["data/train.jsonl"]),
    r"data import --format obelics docs\.jsonl manifest\.jsonl": Tiny(writes=["manifest.jsonl"]),
    r"data shard --manifest manifest\.jsonl --out shards/": Tiny(writes=["shards/*.tar", "shards/index.json"]),
    r"data shard --manifest data/train\.jsonl --out shards ": Tiny(writes=["shards/index.json"]),
    r"export --ckpt runs/demo/checkpoints/last\.ckpt --out runs/demo/export": Tiny(
        writes=["runs/demo/export/config.json", "runs/demo/export/model.safetensors"]),
    r"eval --model runs/demo/export --data runs/demo/data --tasks synth --out runs/demo/eval": Tiny(
        ["--limit", "2", "--quiet"], ["runs/demo/eval/report.json", "runs/demo/eval/report.md"]),
    r"eval --model runs/demo/export --data runs/demo/data --tasks image --out runs/demo/eval": Tiny(
        ["--limit", "2", "--quiet"], ["runs/demo/eval/report.json"]),
    r"eval --model runs/demo/export --data runs/demo/data --tasks synth,pope": Tiny(
        ["--limit", "2", "--quiet"], prints=r"pope"),
    r"eval --model runs/demo/export --manifest runs/demo/data/test\.jsonl": Tiny(["--limit", "4", "--quiet"]),
    r"eval --list-tasks$": Tiny(prints=r"image\.shape"),
    r"generate --model runs/demo/export --prompt ": Tiny(prints=r"\S"),
    r"fit --config recipes/image-fsq\.yaml": Tiny(
        ["--data.synthetic.train_per_task=8", "--data.synthetic.val_per_task=4", "--data.synthetic.test_per_task=3",
         "--data.batch_size=4", "--model.fsq.channels=16", "--trainer.max_steps=3", "--trainer.val_check_interval=3"],
        ["runs/image-fsq/checkpoints/last.ckpt", "runs/any-to-any/data/test.jsonl"]),
    # 30 steps: enough for the tiny decoder to learn that a media span follows such a prompt (20 did here)
    r"fit --config recipes/any-to-any\.yaml": Tiny(
        ["--data.batch_size=8", *TINY_ARCH, "--model.warmup_steps=5", "--trainer.max_steps=30",
         "--trainer.val_check_interval=30"],
        ["runs/any-to-any/checkpoints/last.ckpt"], needs="encodec"),
    r"export --ckpt runs/any-to-any/checkpoints/last\.ckpt --out runs/any-to-any/export": Tiny(
        writes=["runs/any-to-any/export/config.json"], needs="encodec"),
    # the issue-24 check: a freshly trained (here tiny) any-to-any export answers with an image file
    r"generate --model runs/any-to-any/export --prompt .* --out out/$": Tiny(
        writes=["out/*.png"], prints=r"wrote out/\d+_image\.png", needs="encodec"),
}

#: docs-page lines not run here, and why
LEFT_OUT: dict[str, str] = {
    r"fit --config recipes/demo\.yaml (--trainer\.max_steps=50|--model\.lr=1e-3 --data\.batch_size=16)":
        "the README's demo fit with other --trainer/--model flags (each fit costs ~5 s here)",
    r"fit --config recipes/demo\.yaml --ckpt_path": "resuming: tests/test_resume.py resumes through the real CLI",
    r"fit --config recipes/(ddp-cpu|fsdp-gpu)\.yaml|fit .*--trainer\.(strategy|accelerator)=":
        "several processes or GPUs: tests/test_ddp.py runs ddp-cpu at tiny size; FSDP needs GPUs",
    r"fit --config recipes/demo\.yaml --data\.root=data --data\.synthetic=null":
        "the reliability probe: it needs a shard cut in half by hand first (tests/test_sources.py does it)",
    r"data import --format (obelics obelics-00000\.parquet|mmc4 )":
        "real OBELICS/MMC4 downloads; the README's import line runs the same importer on a fixture",
    r"data shard --manifest data/mmc4\.jsonl": "needs the MMC4 import above",
    r"fit --config depth\.yaml|export --ckpt runs/depth/":
        "the depth tutorial: its data come from the page's Python blocks and its tokenizer from the plugin "
        "package (tests/test_plugin.py installs it and trains from a recipe)",
    r"data import --format llava llava/train\.json":
        "the chat tutorial: its LLaVA file comes from the page's Python blocks (tests/test_docs.py); "
        "tests/test_importers_chat.py runs this importer through the real CLI on such a file",
    r"serve ": "a server runs until stopped: tests/test_serve.py starts it and sends requests",
    r"(fit --config recipes/(video-fsq|any-to-any-video)\.yaml|(eval|generate) --model runs/any-to-any-video/)":
        "the video-generation chain: tests/test_video_generation.py runs these four commands through the "
        "real CLI at tiny size and opens the written MP4 with two decoders",
    r"eval --model runs/demo/export --task-file my_tasks\.jsonl":
        "the reader's own task file (the page's Python block writes and scores one, in tests/test_docs.py)",
}


def shell_commands(page: str) -> list[str]:
    """The `anymodal ...` lines of a page's ```bash blocks (continuations joined, comments cut)."""
    text = (ROOT / page).read_text()
    lines = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("anymodal "):
                lines.append(shlex.join(shlex.split(line, comments=True)))
    return lines


DOCS_PAGES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))
README = shell_commands("README.md")
#: (page, line) of every docs-page line to run: not left out, not already run from the README
DOCS = [(page, line) for page in DOCS_PAGES for line in shell_commands(page)
        if line not in README and not any(re.match(p, line[len("anymodal "):]) for p in LEFT_OUT)]


def _spec(line: str) -> Tiny | None:
    rest = line[len("anymodal "):]
    for pattern, spec in TINY.items():  # most specific first: --print_config before plain fit
        if re.match(pattern, rest):
            return spec
    return None


def _run(argv: list[str], cwd) -> tuple[int, str]:
    """The real CLI in this process, in ``cwd``; (exit code, stdout + stderr). ``> FILE`` at the
    end of ``argv`` sends stdout to FILE, as the shell would."""
    from anymodal.cli import main

    target = None
    if len(argv) >= 2 and argv[-2] == ">":
        argv, target = argv[:-2], argv[-1]
    out, err, old = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:  # --print_config and --help exit
                rc = e.code if isinstance(e.code, int) else int(e.code is not None)
        if target is not None:
            with open(target, "w") as f:
                f.write(out.getvalue())
    finally:
        os.chdir(old)
    return rc, out.getvalue() + err.getvalue()


def _inputs(root) -> None:
    """What the README assumes is at hand: `recipes/`, an OBELICS document file with its image
    folder, and `a.png`."""
    from PIL import Image

    (root / "recipes").symlink_to(ROOT / "recipes")
    (root / "images").mkdir()
    Image.new("RGB", (48, 48), (255, 0, 0)).save(root / "images/red.png")
    Image.new("RGB", (48, 48), (200, 30, 30)).save(root / "a.png")
    docs = [{"texts": ["a red square", None, "the end"], "images": [None, "red.png", None]},
            {"texts": [None, "again red"], "images": ["red.png", None]}]
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))


@pytest.fixture(scope="module")
def shell_runs(tmp_path_factory):
    """Runs every covered command in order in one folder: {line: (exit code, output, seconds)}."""
    root = tmp_path_factory.mktemp("readme")
    _inputs(root)
    results = {}
    for line in README + [line for _, line in DOCS]:
        spec = _spec(line)
        if spec is None or line in results or (spec.needs and importlib.util.find_spec(spec.needs) is None):
            continue
        t = time.perf_counter()
        rc, out = _run([*shlex.split(line)[1:], *spec.args], root)
        results[line] = (rc, out, time.perf_counter() - t)
    return root, results


def test_every_shell_command_is_covered():
    assert len(README) >= 15 and len(DOCS) >= 5, (README, DOCS)  # the parser finds the blocks
    assert [line for line in README if _spec(line) is None] == [], "add these README lines to TINY"
    assert [d for d in DOCS if _spec(d[1]) is None] == [], "add these docs lines to TINY or LEFT_OUT"
    left_out = {p for page in DOCS_PAGES for line in shell_commands(page) for p in LEFT_OUT
                if re.match(p, line[len("anymodal "):])}
    assert left_out == set(LEFT_OUT), "LEFT_OUT names lines no page has any more"


@pytest.mark.slow
@pytest.mark.parametrize("line", README + [line for _, line in DOCS],
                         ids=[f"README.md: {x}" for x in README] + [f"{p}: {x}" for p, x in DOCS])
def test_shell_command_runs_and_writes_what_it_says(shell_runs, line):
    root, results = shell_runs
    spec = _spec(line)
    if spec is None:
        pytest.fail(f"`{line}` is in no entry of TINY or LEFT_OUT")
    if spec.needs:
        pytest.importorskip(spec.needs)
    rc, out, seconds = results[line]
    assert rc == 0, f"`{line}` exited {rc} after {seconds:.0f} s:\n{out[-3000:]}"
    for pattern in spec.writes:
        assert list(root.glob(pattern)), f"`{line}` did not write {pattern}:\n{out[-2000:]}"
    if spec.prints:
        assert re.search(spec.prints, out), f"`{line}` printed no match of {spec.prints!r}:\n{out[-2000:]}"
    for written in re.findall(r"^wrote (\S+)$", out, flags=re.M):  # each file it names is there
        assert (root / written).is_file(), written
