"""The real `anymodal` command: training smoke run, recipes parse, bad input gives one line."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def _tiny_overrides(run: Path, data: Path):
    return [f"--data.root={data}", "--data.synthetic=null", "--data.batch_size=8", "--data.seq_len=256",
            "--model.arch.dim=32", "--model.arch.n_layers=1", "--model.arch.n_heads=2", "--model.arch.n_kv_heads=1",
            "--model.val_generate=4", f"--trainer.default_root_dir={run}", "--trainer.logger=null",
            "--trainer.callbacks=null", "--trainer.val_check_interval=3", "--trainer.enable_checkpointing=true"]


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_parses(recipe):
    r = run_cli("fit", "--config", str(recipe), "--print_config", cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = yaml.safe_load(r.stdout)
    assert "model" in cfg and "trainer" in cfg


def test_help_is_light():
    r = run_cli("--help")
    assert r.returncode == 0 and "fit" in r.stdout and "tokenizers" in r.stdout
    # neither `import anymodal` nor `anymodal --help` imports torch or Lightning (seconds each)
    code = ("import sys, anymodal as am\nfrom anymodal.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip().endswith("[]"), r.stdout + r.stderr


def test_tokenizers_lists_builtins():
    r = run_cli("tokenizers")
    assert r.returncode == 0
    lines = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()[1:]}
    assert lines["image.patch"][1:] == ["image", "continuous", "768", "true", "built-in"]
    assert lines["text.bytes"][1:] == ["text", "discrete", "256", "false", "built-in"]


@pytest.mark.slow
def test_fit_export_eval_generate_through_cli(synth_root, tmp_path):
    """A smoke run of the whole path through the real CLI, with a corrupt sample skipped."""
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    # corrupt one training image: the run must skip it, count it, and not die
    first = json.loads((data / "train.jsonl").read_text().splitlines()[0])
    img = data / next(s["path"] for s in first["segments"] if s["type"] == "image")
    img.write_bytes(img.read_bytes()[:40])
    run = tmp_path / "run"
    r = run_cli("fit", "--config", str(ROOT / "recipes/demo.yaml"), *_tiny_overrides(run, data),
                "--trainer.max_steps=20", cwd=tmp_path)  # one epoch: every sample seen
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipped samples: 1" in r.stdout
    # names the sample, its manifest line, the file and the reason
    assert re.search(rf"skipping sample {re.escape(first['id'])} \(\S*train\.jsonl:1\): {re.escape(str(img))}: not an image",
                     r.stderr), r.stderr[-3000:]
    ckpts = list(run.rglob("*.ckpt"))
    assert ckpts, "no checkpoint written"
    exp = tmp_path / "export"
    r = run_cli("export", "--ckpt", str(ckpts[0]), "--out", str(exp))
    assert r.returncode == 0, r.stderr
    r = run_cli("eval", "--model", str(exp), "--manifest", str(data / "test.jsonl"), "--limit", "8",
                "--out", str(tmp_path / "eval"), "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["overall"]["n"] == 8 and 0 <= report["overall"]["accuracy"] <= 1
    r = run_cli("generate", "--model", str(exp), "--prompt", "What shape is it?", "--image", str(img.with_name(
        "000001.png")), "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    # the rest of `make demo`: the suite's table by task and by kind, then the Python example
    r = run_cli("eval", "--model", str(exp), "--data", str(data), "--tasks", "synth", "--limit", "4",
                "--out", str(tmp_path / "eval-synth"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "| image.shape | image | 4 |" in r.stdout and "| video.motion | video | 0 |" in r.stdout  # absent: listed
    r = subprocess.run([sys.executable, str(ROOT / "examples/interleaved_inference.py"), str(exp), str(data)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "What shape is it?" in r.stdout and "chat:" in r.stdout


def test_unknown_tokenizer_gives_one_clear_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"tokenizers": ["text.bytes", "image.nope"]},
                                      "trainer": {"max_steps": 1, "logger": False}}))
    r = run_cli("fit", "--config", str(recipe), cwd=tmp_path)
    assert r.returncode != 0
    assert "unknown tokenizer 'image.nope'" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_media_in_generate_names_file(tmp_path, synth_root):
    import anymodal as am
    from anymodal.model import debug

    m = am.AnyModal(["text.bytes", "image.patch"], debug())
    m.export(tmp_path / "m")
    r = run_cli("generate", "--model", str(tmp_path / "m"), "--prompt", "hi", "--image", str(tmp_path / "no.png"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == f"anymodal: error: {tmp_path / 'no.png'}: file not found"


def test_empty_manifest_line_is_one_line(tmp_path):
    import anymodal as am
    from anymodal.model import debug

    am.AnyModal(["text.bytes"], debug()).export(tmp_path / "m")
    (tmp_path / "t.jsonl").write_text('{"segments": [{"type": "text", "text": "a"}]}\n\n')
    r = run_cli("eval", "--model", str(tmp_path / "m"), "--manifest", str(tmp_path / "t.jsonl"))
    assert r.returncode == 1
    assert r.stderr.strip() == f"anymodal: error: {tmp_path / 't.jsonl'}:2: empty line"
