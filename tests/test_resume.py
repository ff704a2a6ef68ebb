"""Exact resume through the real CLI and Trainer: a run stopped at step k and relaunched with
``--ckpt_path last`` sees the same batches and computes the same losses, bit for bit, as an
uninterrupted run -- for the map-style path (epoch boundaries crossed) and the packed mixture
path (a manifest and tar shards, two loader workers, a corrupt sample skipped on the way)."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from anymodal.train.cli import run

N_STEPS, CRASH_AT = 6, 3


class Recorder(L.Callback):
    """Writes, per step, the loss and a fingerprint of the batch; crashes on request (the
    'preemption'); at the end, a fingerprint of the weights."""

    def __init__(self, out: str, crash_at: int = -1):
        self.out, self.crash_at, self.rows = out, crash_at, []  # "{rank}" in out: one file per rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.crash_at:
            self._dump(pl_module)
            raise RuntimeError("simulated preemption")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        h = hashlib.sha1(batch.ids.cpu().numpy().tobytes() + batch.doc.cpu().numpy().tobytes())
        for k in sorted(batch.vectors):
            h.update(batch.vectors[k].cpu().numpy().tobytes())
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.rows.append({"step": trainer.global_step, "batch": h.hexdigest(), "skipped": batch.skipped,
                          "loss": None if loss is None else float(loss.detach())})
        self._dump(pl_module)

    def on_train_end(self, trainer, pl_module):
        self._dump(pl_module, final=True)

    def _dump(self, pl_module, final=False):
        out = {"rows": self.rows, "skipped_total": pl_module.skipped_total,
               "checkpoint_io": type(pl_module.trainer.strategy.checkpoint_io).__name__}
        if final:
            h = hashlib.sha1()
            for k, v in sorted(pl_module.state_dict().items()):
                h.update(k.encode() + v.cpu().numpy().tobytes())
            out["weights"] = h.hexdigest()
        Path(self.out.format(rank=pl_module.global_rank)).write_text(json.dumps(out))


def _recipe(tmp: Path, data: dict, run_dir: Path, out: Path, crash_at: int = -1) -> Path:
    cfg = {
        "seed_everything": 0,
        "model": {"tokenizers": ["text.bytes", {"name": "image.patch", "patch_size": 8, "max_tokens": 16}],
                  "arch": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1}, "lr": 3e-3, "warmup_steps": 2},
        "data": {"val": None, "seq_len": 160, "batch_size": 4, **data},
        "trainer": {"max_steps": N_STEPS, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "limit_val_batches": 0, "default_root_dir": str(run_dir),
                    "gradient_clip_val": 1.0,
                    "callbacks": [
                        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                         "init_args": {"dirpath": str(run_dir / "ckpt"), "every_n_train_steps": 1, "save_last": True}},
                        {"class_path": "test_resume.Recorder", "init_args": {"out": str(out), "crash_at": crash_at}}]},
    }
    p = tmp / f"recipe-{out.stem}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _fit(recipe: Path, *extra: str) -> None:
    sys.argv = sys.argv[:1]  # LightningCLI warns when pytest's own arguments are present
    run(["fit", "--config", str(recipe), "--allow_class_path_prefix", "test_resume.", *extra])


def _check_exact(tmp_path: Path, data: dict) -> dict:
    full, part1, part2 = (tmp_path / f"{n}.json" for n in ("full", "part1", "part2"))
    _fit(_recipe(tmp_path, data, tmp_path / "run_full", full))
    with pytest.raises(RuntimeError, match="simulated preemption"):
        _fit(_recipe(tmp_path, data, tmp_path / "run_resume", part1, crash_at=CRASH_AT))
    assert (tmp_path / "run_resume/ckpt/last.ckpt").is_file()
    _fit(_recipe(tmp_path, data, tmp_path / "run_resume", part2), "--ckpt_path", "last")
    a, b, c = (json.loads(p.read_text()) for p in (full, part1, part2))
    assert [r["step"] for r in a["rows"]] == list(range(1, N_STEPS + 1))
    assert b["rows"] == a["rows"][:CRASH_AT]
    # the resumed run continues with the very next batch and reproduces every loss bit for bit
    assert c["rows"] == a["rows"][CRASH_AT:]
    assert c["weights"] == a["weights"]
    assert c["skipped_total"] == a["skipped_total"]
    assert a["checkpoint_io"] == "AtomicCheckpointIO"  # the CLI's default
    return a


def test_map_style_resume_is_exact(tmp_path, synth_root):
    # 10 records, 4 per batch, drop_last: 2 steps per epoch, so 6 steps cross two epoch
    # boundaries and the crash lands at the start of epoch 1 (a fresh permutation)
    lines = (synth_root / "train.jsonl").read_text().splitlines()[:10]
    shutil.copytree(synth_root / "images", tmp_path / "images")
    (tmp_path / "small.jsonl").write_text("\n".join(lines) + "\n")
    a = _check_exact(tmp_path, {"root": str(tmp_path), "train": "small.jsonl"})
    assert len({r["batch"] for r in a["rows"]}) == N_STEPS  # the epochs were shuffled differently


@pytest.mark.slow
def test_packed_mixture_resume_is_exact_with_workers(tmp_path, synth_root):
    from anymodal.data.shards import write_shards

    lines = (synth_root / "train.jsonl").read_text().splitlines()
    shutil.copytree(synth_root / "images", tmp_path / "images")
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:12]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(lines[12:32]) + "\n")
    write_shards(tmp_path / "b.jsonl", tmp_path / "shards", samples_per_shard=5)
    # a corrupt image in the manifest source: skipped (and counted) identically in both runs
    first = json.loads(lines[0])
    img = tmp_path / next(s["path"] for s in first["segments"] if s["type"] == "image")
    img.write_bytes(img.read_bytes()[:30])
    data = {"root": str(tmp_path), "sources": [{"path": "a.jsonl", "weight": 0.6}, {"shards": "shards", "weight": 0.4}],
            "tokens_per_batch": 320, "num_workers": 2}
    a = _check_exact(tmp_path, data)
    assert a["skipped_total"] >= 1  # 6 steps x ~8 samples cover the 12-record source at least once
    assert all(r["loss"] is not None and torch.isfinite(torch.tensor(r["loss"])) for r in a["rows"])


# ---- checkpoint safety -----------------------------------------------------------------------------


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_save_fails(tmp_path, monkeypatch):
    from anymodal.train import checkpoint_io as cio

    io_ = cio.AtomicCheckpointIO()
    p = tmp_path / "last.ckpt"
    io_.save_checkpoint({"step": 1, "w": torch.ones(3)}, p)
    assert io_.load_checkpoint(p)["step"] == 1

    def disk_full(fd):
        raise OSError("No space left on device")

    monkeypatch.setattr(cio.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io_.save_checkpoint({"step": 2, "w": torch.zeros(3)}, p)
    monkeypatch.undo()
    assert io_.load_checkpoint(p)["step"] == 1  # the previous checkpoint, intact
    # no temporary file left; the SHA-256 sidecar still matches the intact checkpoint
    assert sorted(x.name for x in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated"):
        io_.load_checkpoint(cut)
    with pytest.raises(cio.UnsafeCheckpointError, match="weights_only=False is disabled"):
        io_.load_checkpoint(p, weights_only=False)


def test_class_path_allowlist(tmp_path, monkeypatch):
    from anymodal.train.cli import ALLOW_ENV, ClassPathNotAllowed

    (tmp_path / "evilpkg.py").write_text(
        "from pathlib import Path\nPath(__file__).with_suffix('.imported').touch()\n"
        "from lightning.pytorch import Callback\nclass Boom(Callback):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    marker = tmp_path / "evilpkg.imported"
    base = {"model": {"tokenizers": ["text.bytes"]}, "trainer": {"max_steps": 1, "logger": False}}
    clean = tmp_path / "clean.yaml"
    clean.write_text(yaml.safe_dump(base))
    evil = tmp_path / "evil.yaml"
    evil.write_text(yaml.safe_dump({**base, "trainer": {**base["trainer"], "callbacks": [
        {"class_path": "evilpkg.Boom"}]}}))
    sys.argv = sys.argv[:1]
    with pytest.raises(ClassPathNotAllowed, match=r"'evilpkg.Boom' \(.*evil.yaml\) is not allowed"):
        run(["fit", "--config", str(evil)])
    with pytest.raises(ClassPathNotAllowed, match="--allow_class_path_prefix evilpkg."):
        run(["fit", "--config", str(clean), "--trainer.callbacks+=evilpkg.Boom"])
    with pytest.raises(ClassPathNotAllowed):
        run(["fit", "--config", str(clean), '--trainer.callbacks=[{"class_path": "evilpkg.Boom"}]'])
    assert not marker.exists()  # refused before anything imported the module
    monkeypatch.setenv(ALLOW_ENV, "evilpkg.")
    with pytest.raises(SystemExit) as e:
        run(["fit", "--config", str(evil), "--print_config"])
    assert e.value.code in (0, None) and marker.exists()
    # a short class name resolved by the parser is refused by the parser's import policy
    monkeypatch.delenv(ALLOW_ENV)
    with pytest.raises(ClassPathNotAllowed, match=r"'evilpkg.Boom' \(a class or callable .*\) is not allowed"):
        run(["fit", "--config", str(clean), "--trainer.callbacks+=Boom", "--trainer.max_steps=0"])
