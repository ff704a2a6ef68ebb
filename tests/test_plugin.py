"""A third-party tokenizer package, installed for real, adds a sense with no edit to anymodal."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

import anymodal as am
from conftest import ROOT, run_cli

PLUGIN = ROOT / "tokenizers" / "anymodal-depth"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """`pip install` the plugin into its own folder (the venv stays untouched)."""
    site = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(site), str(PLUGIN)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert list(site.glob("anymodal_depth-*.dist-info"))
    return site


def test_not_registered_without_the_package():
    assert "depth.patch" not in am.list_tokenizers()


@pytest.mark.slow
def test_installed_plugin_is_listed_and_trains_from_a_recipe(plugin_site, tmp_path):
    env = {"PYTHONPATH": str(plugin_site)}
    r = run_cli("tokenizers", env=env)
    assert r.returncode == 0, r.stderr
    row = next(ln.split() for ln in r.stdout.splitlines() if ln.startswith("depth.patch"))
    assert row[1:] == ["depth", "continuous", "64", "true"]

    # a tiny depth task: is the near object on the left or the right?
    rng = np.random.default_rng(0)
    lines = []
    for i in range(24):
        d = np.full((16, 32), 10.0, dtype=np.float32)
        side = "left" if i % 2 == 0 else "right"
        x0 = int(rng.integers(0, 10)) + (0 if side == "left" else 16)
        d[4:12, x0:x0 + 6] = 1.0
        np.save(tmp_path / f"d{i}.npy", d)
        lines.append(json.dumps({"task": "depth.side", "answer": side, "choices": ["left", "right"], "segments": [
            {"type": "text", "text": "Near side?"}, {"type": "depth", "path": f"d{i}.npy"},
            {"type": "text", "text": side, "role": "target"}]}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    recipe = {
        "model": {"tokenizers": ["text.bytes", {"name": "depth.patch", "patch_size": 8}],
                  "arch": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1}},
        "data": {"root": str(tmp_path), "val": None, "seq_len": 128, "batch_size": 8},
        "trainer": {"max_steps": 3, "logger": False, "default_root_dir": str(tmp_path / "run"),
                    "enable_progress_bar": False},
    }
    (tmp_path / "depth.yaml").write_text(yaml.safe_dump(recipe))
    r = run_cli("fit", "--config", str(tmp_path / "depth.yaml"), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    r = run_cli("export", "--ckpt", str(ckpt), "--out", str(tmp_path / "export"), env=env)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert meta["vocabulary"]["begin"]["depth.patch"] > 0
