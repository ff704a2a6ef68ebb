"""The probes of the hardening issue (#14), each replayed against the real CLI, Trainer and files:
no code from data, no crash for one bad record, no silent corruption, one run per folder.
Numbers in the test names refer to the items of the issue."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import anymodal as am
from anymodal.cli import main
from anymodal.model import debug
from anymodal.train.checkpoint_io import (AtomicCheckpointIO, CheckpointError, UnsafeCheckpointError,
                                          load_checkpoint_file, remove_stale_temporaries)
from anymodal.train.cli import ClassPathNotAllowed, run, split_safety_flags
from anymodal.train.run_lock import LOCK_NAME, RunFolderLocked

GOOD = [{"segments": [{"type": "text", "text": f"sample {i} says hello", "role": "target"}]} for i in range(8)]


def _recipe(tmp: Path, name: str = "r.yaml", data: dict | None = None, trainer: dict | None = None,
            tokenizers=("text.bytes",), **top) -> Path:
    run_dir = tmp / "run"
    cfg = {"model": {"tokenizers": list(tokenizers), "arch": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1},
                     "warmup_steps": 1},
           "data": {"root": str(tmp), "train": "t.jsonl", "val": None, "batch_size": 4, "seq_len": 64, **(data or {})},
           "trainer": {"max_steps": 2, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                       "limit_val_batches": 0, "default_root_dir": str(run_dir),
                       "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                      "init_args": {"dirpath": str(run_dir / "ckpt"), "every_n_train_steps": 1,
                                                    "save_last": True}}],
                       **(trainer or {})},
           **top}
    if not (tmp / "t.jsonl").exists():
        (tmp / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD))
    p = tmp / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def _fit(*argv: str) -> None:
    sys.argv = sys.argv[:1]  # LightningCLI warns when pytest's own arguments are present
    run(list(argv))


def _cli(capsys, *argv: str) -> tuple[int, str]:
    sys.argv = sys.argv[:1]
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


@pytest.fixture
def evilpkg(tmp_path, monkeypatch):
    """A module whose import, and whose function's call, leave marker files."""
    d = tmp_path / "evil"
    d.mkdir()
    (d / "evilpkg.py").write_text(
        "from pathlib import Path\nPath(__file__).with_suffix('.imported').touch()\n"
        "def hook(*a, **k):\n    Path(__file__).with_suffix('.called').touch()\n"
        "class X:\n    pass\n")
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.delenv("ANYMODAL_ALLOW_CLASS_PATH", raising=False)
    sys.modules.pop("evilpkg", None)
    yield d / "evilpkg.imported"
    sys.modules.pop("evilpkg", None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step run with a checkpoint per step: last.ckpt (+ its .sha256) to damage and resume."""
    tmp = tmp_path_factory.mktemp("trained")
    _fit("fit", "--config", str(_recipe(tmp)))
    return tmp / "run" / "ckpt" / "last.ckpt"


# ---- 1. the class_path allowlist holds on every path that imports ------------------------------


def test_1_allowlist_covers_nested_files_inline_configs_callables_and_checkpoints(tmp_path, evilpkg, monkeypatch):
    sub = tmp_path / "recipes"
    sub.mkdir()
    (sub / "model.yaml").write_text("class_path: evilpkg.X\n")
    (sub / "nested.yaml").write_text("model: model.yaml\ntrainer: {max_steps: 1, logger: false}\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the nested file resolves relative to the recipe, not the cwd
    lam = "lightning.pytorch.callbacks.LambdaCallback"
    probes = {
        "nested file": ["--config", str(sub / "nested.yaml")],
        "inline config": ["--config", "{model: {class_path: evilpkg.X}}"],
        "callable": [f"--trainer.callbacks+={lam}", "--trainer.callbacks.on_fit_start=evilpkg.hook"],
        "builtins callable": ["--config", "{trainer: {callbacks: [{class_path: %s, init_args: "
                              "{on_fit_start: builtins.print}}]}}" % lam],
    }
    for what, args in probes.items():
        with pytest.raises(ClassPathNotAllowed, match=r"(evilpkg\.(X|hook)|builtins\.print).* is not allowed"):
            _fit("fit", *args, "--print_config")
        assert not evilpkg.exists(), what
    # a weights-only-safe checkpoint whose hyper-parameters name a class: data never names code
    ck = tmp_path / "named.ckpt"
    torch.save({"hyper_parameters": {"_class_path": "evilpkg.X", "_instantiator": "evilpkg.hook"},
                "state_dict": {}}, ck)
    with pytest.raises(UnsafeCheckpointError, match="never chooses the code"):
        _fit("fit", "--config", str(_recipe(tmp_path)), "--ckpt_path", str(ck))
    assert not evilpkg.exists()


# ---- 2. pickle loading needs a command-line flag -----------------------------------------------


class _Touch:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_2_recipe_cannot_turn_on_pickle_loading(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "x": _Touch(marker)}, evil)
    plugin = [{"class_path": "lightning.fabric.plugins.io.TorchCheckpointIO"}]
    r = _recipe(tmp_path, trainer={"plugins": plugin}, weights_only=False)
    for sub in ("fit", "validate"):
        with pytest.raises(UnsafeCheckpointError, match="--allow-pickle"):
            _fit(sub, "--config", str(r), "--ckpt_path", str(evil))
    # the recipe's own CheckpointIO without weights_only: loads still go through the checks
    r2 = _recipe(tmp_path, "r2.yaml", trainer={"plugins": plugin})
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        _fit("fit", "--config", str(r2), "--ckpt_path", str(evil))
    assert not marker.exists()
    assert split_safety_flags(["fit", "--allow-pickle", "--no-verify"]) == (["fit"], True, False)
    with pytest.raises(UnsafeCheckpointError, match="--allow-pickle"):
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)
    with pytest.warns(UserWarning, match="--allow-pickle"):  # the flag works, and says what it does
        with pytest.raises(Exception):  # the payload is no model: the run fails after unpickling
            _fit("fit", "--config", str(r2), "--ckpt_path", str(evil), "--allow-pickle")
    assert marker.exists()


# ---- 4. config.json sizes are checked against the weights before anything is allocated ----------


def test_4_export_config_checked_against_weights_and_files_stay_inside(tmp_path):
    torch.manual_seed(0)
    am.AnyModal(["text.bytes"], debug()).export(tmp_path / "exp")
    cfg_file = tmp_path / "exp" / "config.json"
    good = json.loads(cfg_file.read_text())
    for change, message in (({"dim": 2 ** 20}, "bad model config"),  # refused by the config's own checks
                            ({"dim": 2048, "n_heads": 128, "n_kv_heads": 64, "n_layers": 24},
                             "model.safetensors does not match config.json.*dim=2048, n_layers=24"),
                            ({"n_layers": 3}, "does not match config.json.*missing in the weights")):
        cfg_file.write_text(json.dumps({**good, "model": {**good["model"], **change}}))
        with pytest.raises(ValueError, match=message):
            am.AnyModal.load(tmp_path / "exp")  # one line, before any weight is allocated
    for path in ("/etc/passwd", "../../etc/passwd"):
        cfg_file.write_text(json.dumps({**good, "tokenizers": [{"name": "text.hf", "path": path}]}))
        with pytest.raises(ValueError, match="(must be a relative path|points outside the export folder)"):
            am.AnyModal.load(tmp_path / "exp")
    cfg_file.write_text(json.dumps(good))
    assert am.AnyModal.load(tmp_path / "exp").config.dim == good["model"]["dim"]


# ---- 5 (and issue 16 item 6). one bad record never ends a run ------------------------------------


def _bad_manifest(tmp: Path) -> Path:
    from test_media_video import write_video

    write_video(tmp / "v.mp4")
    bad = ["{not json",
           json.dumps({"segments": [{"type": "imus", "path": "x.npy"}]}),
           json.dumps({"segments": [{"type": "text", "text": "hi", "tokenizer": "text.nope"}]}),
           json.dumps({"segments": [{"type": "video", "path": "v.mp4", "num_frames": "abc"}]})]
    lines = [json.dumps(r) for r in GOOD]
    lines[1:1] = bad  # lines 2..5
    (tmp / "t.jsonl").write_text("\n".join(lines) + "\n")
    return tmp / "t.jsonl"


TUBELET = {"name": "video.tubelet", "patch_size": 8, "tubelet": 4, "num_frames": 4}


def test_16_6_bad_record_names_manifest_file_and_line(tmp_path):
    from anymodal.data.manifest import read_manifest
    from anymodal.train.data import StreamDataset

    m = _bad_manifest(tmp_path)
    with pytest.raises(am.ManifestError, match=r"t.jsonl:2: not valid JSON"):
        read_manifest(m)  # evaluation keeps the strict reader
    assert len(read_manifest(m, on_error="skip")) == 11  # validation: the line that is not JSON left out
    model = am.AnyModal(["text.bytes", TUBELET], debug())
    ds = StreamDataset(read_manifest(m, on_error="keep"), model.builder, 256)
    reasons = {i: ds[i] for i in range(1, 5)}
    assert all(type(x).__name__ == "Skipped" for x in reasons.values())
    assert reasons[1].sample_id.endswith("t.jsonl:2") and "not valid JSON" in reasons[1].reason
    assert "t.jsonl:3" in reasons[2].sample_id and "no tokenizer for modality 'imus'" in reasons[2].reason
    assert "t.jsonl:4" in reasons[3].sample_id and "'text.nope'" in reasons[3].reason
    assert "t.jsonl:5" in reasons[4].sample_id
    assert type(ds[0]).__name__ != "Skipped"


@pytest.mark.parametrize("path,workers", [
    ("map", 0), ("packed", 0),
    pytest.param("map", 2, marks=pytest.mark.slow), pytest.param("packed", 2, marks=pytest.mark.slow)])
def test_5_bad_records_are_skipped_and_counted(tmp_path, capsys, path, workers):
    _bad_manifest(tmp_path)
    data = {"num_workers": workers, **({"tokens_per_batch": 128} if path == "packed" else {})}
    r = _recipe(tmp_path, data=data, trainer={"max_steps": 4}, tokenizers=("text.bytes", TUBELET))
    _fit("fit", "--config", str(r))
    out = capsys.readouterr().out
    skipped = int(out.split("skipped samples:")[1].split()[0].rstrip(";"))
    assert skipped >= 1 and (tmp_path / "run" / "ckpt" / "last.ckpt").is_file()


# ---- 6. a flipped byte is caught; 7. damaged checkpoints get one line ----------------------------


def _flip(src: Path, dst: Path, at: int) -> Path:
    b = bytearray(src.read_bytes())
    b[at] ^= 0x01
    dst.write_bytes(bytes(b))
    return dst


def test_6_flipped_byte_in_checkpoint_and_export_is_caught(tmp_path, trained, capsys):
    import shutil

    ck = tmp_path / "last.ckpt"
    shutil.copy(trained.with_name("last.ckpt.sha256"), tmp_path / "last.ckpt.sha256")
    # a byte in the middle of the embedding weights: torch.load would read it without complaint
    _flip(trained, ck, len(trained.read_bytes()) // 2)
    with pytest.raises(ValueError, match="last.ckpt: SHA-256 mismatch"):
        am.AnyModal.load(ck)
    am.AnyModal.load(ck, verify=False)  # the escape hatch
    code, err = _cli(capsys, "export", "--ckpt", str(ck), "--out", str(tmp_path / "x"))
    assert code == 1 and "SHA-256 mismatch" in err and len(err.splitlines()) == 1
    assert _cli(capsys, "export", "--ckpt", str(ck), "--out", str(tmp_path / "x"), "--no-verify")[0] == 0
    weights = tmp_path / "x" / "model.safetensors"
    _flip(weights, weights, weights.stat().st_size - 7)
    with pytest.raises(ValueError, match="model.safetensors: SHA-256 mismatch"):
        am.AnyModal.load(tmp_path / "x")
    am.AnyModal.load(tmp_path / "x", verify=False)


def test_7_damaged_checkpoints_get_one_line_each(tmp_path, trained, capsys):
    data = trained.read_bytes()
    cases = {"empty": (b"", "empty file"), "100 bytes": (data[:100], "truncated"),
             "half": (data[: len(data) // 2], "truncated"), "text": (b"hello " * 50, "not a checkpoint")}
    r = _recipe(tmp_path)
    for what, (content, message) in cases.items():
        bad = tmp_path / "bad.ckpt"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint_file(bad)
        commands = [["export", "--ckpt", str(bad), "--out", str(tmp_path / "x")]]
        if what in ("empty", "half"):  # the training commands read it through the same function
            commands += [[sub, "--config", str(r), "--ckpt_path", str(bad)] for sub in ("fit", "validate")]
        for argv in commands:
            code, err = _cli(capsys, *argv)
            assert code == 1 and message in err and len(err.splitlines()) == 1, (what, argv[0], err)


# ---- 8. temporaries of a save killed mid-way are cleaned ----------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_8_stale_checkpoint_temporaries_are_removed_at_start(tmp_path):
    ckdir = tmp_path / "run" / "ckpt"
    ckdir.mkdir(parents=True)
    dead, live = ckdir / f"last.ckpt.tmp-{_dead_pid()}", ckdir / f"last.ckpt.tmp-{os.getppid()}"
    other = ckdir / "notes.tmp-abc"
    for f in (dead, live, other):
        f.write_bytes(b"partial")
    _fit("fit", "--config", str(_recipe(tmp_path)))
    assert not dead.exists() and live.exists() and other.exists()
    assert (ckdir / "last.ckpt").is_file()
    assert remove_stale_temporaries(ckdir) == []


# ---- 9. resume keeps metrics.csv ---------------------------------------------------------------


def test_9_resume_appends_to_metrics_csv(tmp_path):
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
              "init_args": {"save_dir": str(tmp_path / "run"), "name": "csv", "version": ""}}
    r = _recipe(tmp_path, trainer={"logger": [logger], "log_every_n_steps": 1, "max_steps": 2})
    _fit("fit", "--config", str(r))
    metrics = tmp_path / "run" / "csv" / "metrics.csv"
    first = list(csv.DictReader(metrics.open()))
    assert first
    _fit("fit", "--config", str(r), "--trainer.max_steps=4", "--ckpt_path", "last")
    rows = list(csv.DictReader(metrics.open()))
    assert rows[: len(first)] == [{**row, **{k: "" for k in rows[0].keys() - row.keys()}} for row in first]
    assert max(int(x["step"]) for x in rows) > max(int(x["step"]) for x in first)


# ---- 10. one run per folder ---------------------------------------------------------------------


def test_10_second_run_into_a_folder_is_refused_and_stale_locks_are_taken_over(tmp_path):
    r = _recipe(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / LOCK_NAME
    import socket

    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "then", "command": "anymodal fit x"}
    lock.write_text(json.dumps(holder))
    with pytest.raises(RunFolderLocked, match=rf"run folder {run_dir} is in use by PID {os.getppid()}"):
        _fit("fit", "--config", str(r))
    assert not (run_dir / "ckpt").exists()  # refused before writing anything
    lock.write_text(json.dumps({**holder, "pid": _dead_pid()}))
    _fit("fit", "--config", str(r))  # a stale lock (its process is gone) is replaced
    assert (run_dir / "ckpt" / "last.ckpt").is_file() and not lock.exists()  # released at the end
