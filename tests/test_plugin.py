"""A third-party tokenizer package, installed for real, adds a sense with no edit to anymodal."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import yaml

import anymodal as am
from anymodal.cli import main
from conftest import ROOT, run_cli
from plugin_env import DEPTH_ENTRY, installed, write_distribution

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
    assert row[1:] == ["depth", "continuous", "64", "true", "anymodal-depth", "0.1.0"]

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
        "trainer": {"max_steps": 3, "logger": False, "default_root_dir": str(tmp_path / "run")},
    }
    (tmp_path / "depth.yaml").write_text(yaml.safe_dump(recipe))
    r = run_cli("fit", "--config", str(tmp_path / "depth.yaml"), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    # the progress bar: an epoch count with no total, never `Epoch 0/-2` (max_epochs is -1)
    assert "Epoch 0 (max_steps 3)" in r.stdout and "/-2" not in r.stdout, r.stdout[-2000:]
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    r = run_cli("export", "--ckpt", str(ckpt), "--out", str(tmp_path / "export"), env=env)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert meta["vocabulary"]["begin"]["depth.patch"] > 0
    assert meta["plugins"] == {"depth.patch": {"distribution": "anymodal-depth", "version": "0.1.0"}}
    # where the plugin is not installed, the export says what to install, in one line
    r = run_cli("generate", "--model", str(tmp_path / "export"), "--prompt", "Near side?")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "anymodal: error: this model needs tokenizer 'depth.patch' from the plugin anymodal-depth 0.1.0, "
        "which is not installed: pip install anymodal-depth==0.1.0"], r.stderr


# ---- what a plugin author or recipe writer gets wrong, and the one line that says so ----------------
@pytest.fixture
def depth_site(tmp_path):
    return write_distribution(tmp_path / "site", "anymodal-depth", "0.1.0", DEPTH_ENTRY)


def test_listing_shows_providers_and_clashes_without_warnings_noise(tmp_path, depth_site, capsys, caplog):
    evil = write_distribution(tmp_path / "evil", "evil-patch", "2.0", {"image.patch": DEPTH_ENTRY["depth.patch"]})
    with installed(depth_site, evil), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["tokenizers"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    assert rows["depth.patch"].split()[-2:] == ["anymodal-depth", "0.1.0"]
    assert rows["text.bytes"].split()[-1] == "built-in"
    # the clashed name is listed once, as a clash naming both providers, and warned about
    assert [ln.split()[0] for ln in out.splitlines()].count("image.patch") == 1
    assert rows["image.patch"].endswith("CLASH: built-in and evil-patch 2.0")
    assert "'image.patch' is provided by both built-in and evil-patch 2.0" in caplog.text
    assert not seen, [str(w.message) for w in seen]  # e.g. torch's weight_norm FutureWarning (audio.encodec)


def test_a_tokenizer_typo_in_a_recipe_is_one_line(tmp_path, capsys):
    recipe = {"model": {"tokenizers": ["text.bytes", {"name": "image.ptch", "patch_size": 8}]},
              "data": {"root": str(tmp_path)}, "trainer": {"max_steps": 1, "logger": False}}
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["fit", "--config", str(tmp_path / "typo.yaml")]) == 1
    err = capsys.readouterr().err
    assert [ln for ln in err.strip().splitlines() if "Seed set to" not in ln] == [
        "anymodal: error: unknown tokenizer 'image.ptch' (did you mean 'image.patch'?); installed tokenizer plugins: "
        "none; registered: " + ", ".join(am.list_tokenizers())], err


def test_fit_help_lists_model_and_data_keys(tmp_path, capsys):
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("--trainer.max_steps", "--model.tokenizers", "--model.arch.max_grid", "--model.arch.dim",
                "--data.root", "--data.train", "--data.synthetic.train_per_task"):
        assert key in out, key
    # and the keys it lists are the ones the parser takes
    recipe = {"model": {"tokenizers": ["text.bytes"]}, "data": {"root": str(tmp_path)}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "r.yaml"), "--model.arch.max_grid", "8", "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["arch"]["max_grid"] == 8


def test_loading_a_model_whose_plugin_is_missing_names_it(tmp_path, depth_site):
    from anymodal.model import debug

    with installed(depth_site):
        model = am.AnyModal(["text.bytes", {"name": "depth.patch", "patch_size": 8}], debug())
        assert model.meta()["plugins"] == {"depth.patch": {"distribution": "anymodal-depth", "version": "0.1.0"}}
        model.export(tmp_path / "export")
        am.AnyModal.load(tmp_path / "export")  # with the plugin: fine
    with pytest.raises(KeyError, match=r"^this model needs tokenizer 'depth.patch' from the plugin anymodal-depth "
                                       r"0.1.0, which is not installed: pip install anymodal-depth==0.1.0$"):
        am.AnyModal.load(tmp_path / "export")
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    del meta["plugins"]  # an export from before the record
    (tmp_path / "export" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(KeyError, match=r"this model needs tokenizer 'depth.patch', which no installed package "
                                       r"provides \(it comes from a plugin"):
        am.AnyModal.load(tmp_path / "export")


def test_garbage_npy_is_called_what_it_is(tmp_path, depth_site):
    (tmp_path / "bad.npy").write_bytes(b"this is not an array" * 10)
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    with installed(depth_site):
        tok = am.create_tokenizer("depth.patch")
        with pytest.raises(am.MediaError, match=r"bad.npy: not a NumPy .npy file"):
            tok.encode(am.Segment(data=str(tmp_path / "bad.npy"), modality="depth"))
        with pytest.raises(am.MediaError, match=r"words.npy: depth map must hold numbers \(metres\), got dtype <U1"):
            tok.encode(am.Segment(data=str(tmp_path / "words.npy"), modality="depth"))


def test_a_recording_over_max_grid_names_itself_and_the_fix(tmp_path, depth_site):
    from anymodal.model import debug

    np.save(tmp_path / "long.npy", np.ones((8, 8 * 100), dtype=np.float32))  # a 1 x 100 strip of patches
    with installed(depth_site):
        model = am.AnyModal(["text.bytes", {"name": "depth.patch", "patch_size": 8, "max_tokens": 100}], debug())
        with pytest.raises(ValueError, match=r"long.npy: tokenizer 'depth.patch' laid it out as a grid "
                                             r"\(1, 1, 100\), whose side 100 is over model.arch.max_grid=64; raise "
                                             r"model.arch.max_grid to at least 100, or make the tokenizer emit fewer"):
            model.batch([["Near?", am.Segment(data=str(tmp_path / "long.npy"), modality="depth")]])
