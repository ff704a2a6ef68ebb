"""The demo recipe on 2 CPU processes over gloo (``--trainer.strategy=ddp``) against one process
with the same global batch: same losses, same final weights, and the two distributed failure
modes handled on every rank at once -- a batch whose samples are all bad on rank 1 only (rank 1
steps on a dummy row instead of leaving rank 0 waiting in the gradient all-reduce) and a NaN loss
on rank 1 only (``model.nonfinite=skip``: the update is dropped on both ranks). Validation and
evaluation on 2 processes report what one process reports (sums over ranks, each sample once)."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import ROOT

STEPS, POISON_STEP = 3, 2


class PoisonLoss(L.Callback):
    """Makes the loss of one rank NaN at one step (the weights stay finite)."""

    def __init__(self, step: int, rank: int = 0):
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            batch.loss_weight.fill_(float("nan"))


def _override(tmp: Path, name: str, data: Path, poison_rank: int) -> Path:
    run = tmp / name
    cfg = {"model": {"arch": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1}, "val_generate": 0,
                     "nonfinite": "skip", "warmup_steps": 1},
           "data": {"root": str(data), "synthetic": None, "val": None, "seq_len": 256, "seed": 0},
           "trainer": {"max_steps": STEPS, "limit_val_batches": 0, "log_every_n_steps": 1, "enable_progress_bar": False,
                       "enable_model_summary": False, "default_root_dir": str(run),
                       "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                   "init_args": {"save_dir": str(run), "name": "csv", "version": ""}}],
                       "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                      "init_args": {"dirpath": str(run / "ckpt"), "save_last": True}},
                                     {"class_path": "test_ddp.PoisonLoss",
                                      "init_args": {"step": POISON_STEP, "rank": poison_rank}}]}}
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _losses(run: Path) -> list[float]:
    with open(run / "csv" / "metrics.csv") as fh:
        return [float(r["train/loss"]) for r in csv.DictReader(fh)]


def _weights(run: Path) -> dict:
    return torch.load(run / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tmp_path, synth_root):
    from anymodal.train.cli import run
    from anymodal.train.sources import ResumableSampler

    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(synth_root / "images", data / "images")
    lines = (synth_root / "train.jsonl").read_text().splitlines()[:16]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    # corrupt exactly the 2 samples rank 1 takes in its first batch (batch_size 2 per rank)
    bad = list(ResumableSampler(range(16), num_replicas=2, rank=1, seed=0))[:2]
    for i in bad:
        rec = json.loads(lines[i])
        img = data / next(s["path"] for s in rec["segments"] if s["type"] == "image")
        img.write_bytes(b"not a png")
    demo = str(ROOT / "recipes" / "demo.yaml")
    allow = ["--allow_class_path_prefix", "test_ddp."]

    # the DDP launcher starts rank 1 as `anymodal fit ...` again: it must import this module too
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([str(Path(sys.executable).parent / "anymodal"), "fit", "--config", demo, "--config",
                        str(_override(tmp_path, "ddp", data, poison_rank=1)), "--trainer.strategy=ddp",
                        "--trainer.devices=2", "--trainer.accelerator=cpu", "--data.batch_size=2", *allow],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipped samples: 2; non-finite steps skipped: 1" in r.stdout, r.stdout[-2000:]

    sys.argv = sys.argv[:1]  # LightningCLI warns when pytest's own arguments are present
    run(["fit", "--config", demo, "--config", str(_override(tmp_path, "single", data, poison_rank=0)),
         "--trainer.devices=1", "--trainer.accelerator=cpu", "--data.batch_size=4", *allow])

    ddp, single = torch.tensor(_losses(tmp_path / "ddp")), torch.tensor(_losses(tmp_path / "single"))
    assert len(ddp) == len(single) == STEPS
    assert ddp[POISON_STEP].isnan() and single[POISON_STEP].isnan()  # logged as NaN, update dropped
    torch.testing.assert_close(ddp[:POISON_STEP], single[:POISON_STEP], rtol=1e-5, atol=1e-6)
    wd, ws = _weights(tmp_path / "ddp"), _weights(tmp_path / "single")
    assert wd.keys() == ws.keys()
    for k in wd:
        torch.testing.assert_close(wd[k], ws[k], rtol=1e-4, atol=1e-6, msg=k)


def _tiny_recipe(tmp_path: Path, synth_root: Path, **model) -> Path:
    lines = (synth_root / "train.jsonl").read_text().splitlines()[:8]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    if not (tmp_path / "images").exists():
        shutil.copytree(synth_root / "images", tmp_path / "images")
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump({
        "model": {"tokenizers": ["text.bytes", {"name": "image.patch", "patch_size": 8}],
                  "arch": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1}, **model},
        "data": {"root": str(tmp_path), "train": "t.jsonl", "val": None, "batch_size": 4, "seq_len": 256},
        "trainer": {"max_steps": 3, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / "run"),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "every_n_train_steps": 1}},
                                  {"class_path": "test_ddp.PoisonLoss", "init_args": {"step": 1}}]}}))
    return p


def test_nonfinite_loss_stops_with_a_clear_error_and_finite_checkpoint(tmp_path, synth_root):
    from anymodal.train.cli import run
    from anymodal.train.module import NonFiniteLossError

    sys.argv = sys.argv[:1]
    with pytest.raises(NonFiniteLossError, match=r"not finite at step 1 \(on 1 of 1 rank\(s\)\); stopping"):
        run(["fit", "--config", str(_tiny_recipe(tmp_path, synth_root)), "--allow_class_path_prefix", "test_ddp."])
    (ckpt,) = (tmp_path / "ckpt").glob("*.ckpt")  # step 1, before the NaN
    assert all(torch.isfinite(v).all() for v in torch.load(ckpt, weights_only=True)["state_dict"].values())


def test_nonfinite_loss_skip_drops_the_update(tmp_path, synth_root):
    from anymodal.train.cli import run

    sys.argv = sys.argv[:1]
    run(["fit", "--config", str(_tiny_recipe(tmp_path, synth_root, nonfinite="skip")),
         "--allow_class_path_prefix", "test_ddp."])
    ck = torch.load(next((tmp_path / "ckpt").glob("*.ckpt")), weights_only=True)
    assert ck["global_step"] == 3 and ck["anymodal_counters"] == {"skipped": 0, "nonfinite": 1}
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values())
    # AdamW took 2 steps, not 3: the skipped step left the moments alone too
    states = ck["optimizer_states"][0]["state"]
    assert {int(s["step"]) for s in states.values()} == {2}


def _fsdp_cli(tmp_path, *extra):
    import lightning as L

    from anymodal.train.cli import AnyModalCLI

    class ParseOnly(AnyModalCLI):  # everything the recipe builds, except the Trainer (it needs CUDA)
        def instantiate_trainer(self, **kwargs):
            return None

    sys.argv = sys.argv[:1]
    return ParseOnly(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     run=False, parser_kwargs={"default_env": False},
                     args=["--config", str(ROOT / "recipes" / "fsdp-gpu.yaml"), "--model.arch.dim=32",
                           "--model.arch.n_layers=2", "--model.arch.n_heads=2", "--model.arch.n_kv_heads=1",
                           f"--data.root={tmp_path}", *extra])


def test_fsdp_recipe_builds_its_strategy_without_a_gpu(tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from anymodal.model.transformer import Block

    cli = _fsdp_cli(tmp_path)
    trainer_cfg = cli.config_init["trainer"]
    strategy = trainer_cfg["strategy"]
    assert isinstance(strategy, FSDPStrategy)
    assert trainer_cfg["precision"] == "bf16-mixed" and trainer_cfg["accelerator"] == "gpu"
    wrap = strategy.kwargs["auto_wrap_policy"]
    ckpt = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert isinstance(wrap, ModuleWrapPolicy) and wrap._module_classes == {Block}
    assert isinstance(ckpt, ModuleWrapPolicy) and ckpt._module_classes == {Block}
    assert strategy._state_dict_type == "full"  # one .ckpt through AtomicCheckpointIO
    assert str(strategy.sharding_strategy).endswith("FULL_SHARD")
    # the policy selects exactly the decoder blocks of the model the recipe builds
    model = cli.model.net.model
    wrapped = [m for m in model.modules() if wrap._module_classes & {type(m)}]
    assert len(wrapped) == 2 and all(isinstance(m, Block) for m in wrapped)
    assert cli.datamodule.tokens_per_batch == 16384


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fsdp_recipe_trains_on_gpu(tmp_path, synth_root):
    from anymodal.train.cli import run

    shutil.copytree(synth_root, tmp_path / "data")
    run_dir = tmp_path / "run"
    override = tmp_path / "override.yaml"  # a CSV log and one full checkpoint to check, in place of the recipe's
    override.write_text(yaml.safe_dump({"trainer": {
        "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(run_dir), "name": "csv", "version": ""}}],
        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                       "init_args": {"dirpath": str(run_dir / "ckpt"), "save_last": True}}]}}))
    sys.argv = sys.argv[:1]
    run(["fit", "--config", str(ROOT / "recipes" / "fsdp-gpu.yaml"), "--config", str(override),
         "--trainer.devices=1", "--trainer.max_steps=3",
         "--model.arch.dim=64", "--model.arch.n_layers=2", "--model.arch.n_heads=2", "--model.arch.n_kv_heads=1",
         f"--data.root={tmp_path / 'data'}", "--data.synthetic=null", "--data.seq_len=256",
         "--data.tokens_per_batch=512", "--data.num_workers=0", "--trainer.log_every_n_steps=1",
         f"--trainer.default_root_dir={run_dir}", "--trainer.val_check_interval=2"])
    with open(run_dir / "csv" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert val and all(math.isfinite(x) for x in val), rows  # validation ran (every 2 steps) under FSDP
    ck = torch.load(run_dir / "ckpt" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ck["global_step"] == 3
    # state_dict_type "full": one checkpoint holding every parameter at its full shape
    from anymodal.train.module import AnyModalModule

    ref = AnyModalModule(**{k: ck["hyper_parameters"][k] for k in ("tokenizers", "arch")}).state_dict()
    assert ck["state_dict"].keys() == ref.keys()
    for k, v in ck["state_dict"].items():
        assert v.shape == ref[k].shape and torch.isfinite(v.float()).all(), k


@pytest.mark.slow
def test_ddp_packed_mixture_resume_is_exact(tmp_path, synth_root):
    """2 ranks over gloo on the packed path (a manifest and shards): stopped at step 2 and resumed
    with --ckpt_path last, each rank sees the batches and losses of the uninterrupted run (the
    checkpoint written by rank 0 carries both ranks' reader states)."""
    from anymodal.data.shards import write_shards

    lines = (synth_root / "train.jsonl").read_text().splitlines()
    shutil.copytree(synth_root / "images", tmp_path / "images")
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:10]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(lines[10:30]) + "\n")
    write_shards(tmp_path / "b.jsonl", tmp_path / "shards", samples_per_shard=5)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}

    def fit(name: str, crash_at: int = -1, *extra: str):
        cfg = {"seed_everything": 0,
               "model": {"tokenizers": ["text.bytes", {"name": "image.patch", "patch_size": 8, "max_tokens": 16}],
                         "arch": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1}, "warmup_steps": 1},
               "data": {"root": str(tmp_path), "val": None, "seq_len": 160, "tokens_per_batch": 320,
                        "sources": [{"path": "a.jsonl", "weight": 0.5}, {"shards": "shards", "weight": 0.5}]},
               "trainer": {"max_steps": 4, "logger": False, "enable_progress_bar": False,
                           "enable_model_summary": False, "limit_val_batches": 0,
                           "strategy": "ddp", "devices": 2, "accelerator": "cpu",
                           "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                          "init_args": {"dirpath": str(tmp_path / name / "ckpt"),
                                                        "every_n_train_steps": 1, "save_last": True}},
                                         {"class_path": "test_resume.Recorder",
                                          "init_args": {"out": str(tmp_path / f"{name}-{{rank}}-{crash_at}.json"),
                                                        "crash_at": crash_at}}]}}
        recipe = tmp_path / f"{name}{crash_at}.yaml"
        recipe.write_text(yaml.safe_dump(cfg))
        return subprocess.run([str(Path(sys.executable).parent / "anymodal"), "fit", "--config", str(recipe),
                               "--allow_class_path_prefix", "test_resume.", *extra], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600, env=env, check=False)

    r = fit("full")
    assert r.returncode == 0, r.stderr[-3000:]
    r = fit("resume", 2)
    assert r.returncode != 0 and "simulated preemption" in r.stderr
    r = fit("resume", -1, "--ckpt_path", "last")
    assert r.returncode == 0, r.stderr[-3000:]
    full = {rank: json.loads((tmp_path / f"full-{rank}--1.json").read_text())["rows"] for rank in (0, 1)}
    for rank in (0, 1):
        part = json.loads((tmp_path / f"resume-{rank}-2.json").read_text())
        rest = json.loads((tmp_path / f"resume-{rank}--1.json").read_text())
        assert part["rows"] == full[rank][:2] and rest["rows"] == full[rank][2:], rank
    assert len(full[0]) == len(full[1]) == 4
    assert full[0][0]["batch"] != full[1][0]["batch"]  # the two ranks read different samples


def test_even_shard_sampler_takes_every_sample_once_in_equal_shards():
    from anymodal.train.data import NO_SAMPLE, EvenShardSampler

    for n, world in [(9, 2), (10, 4), (1, 2), (3, 3)]:
        shards = [list(EvenShardSampler(range(n), num_replicas=world, rank=r)) for r in range(world)]
        assert {len(s) for s in shards} == {-(-n // world)}, (n, world)  # the same number of batches on every rank
        real = sorted(i for s in shards for i in s if i != NO_SAMPLE)
        assert real == list(range(n)), (n, world)


def _val_recipe(tmp: Path, data: Path, name: str) -> Path:
    run = tmp / name
    cfg = {"seed_everything": 0,
           "model": {"tokenizers": ["text.bytes", {"name": "image.patch", "patch_size": 8}],
                     "arch": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1}, "warmup_steps": 1,
                     "val_generate": 100},
           "data": {"root": str(data), "batch_size": 2, "seq_len": 256},
           "trainer": {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
                       "default_root_dir": str(run),
                       "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                   "init_args": {"save_dir": str(run), "name": "csv", "version": ""}}],
                       "callbacks": [{"class_path": "anymodal.evaluate.callback.EvalCallback",
                                      "init_args": {"tasks": "image", "split": "val", "limit": 3, "batch_size": 2}}]}}
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _val_metrics(run: Path) -> dict[str, float]:
    with open(run / "csv" / "metrics.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    return {k: float(v) for k, v in row.items() if v != ""}


@pytest.mark.slow
def test_ddp_validation_matches_one_process(tmp_path, synth_root):
    """`anymodal validate` on 2 gloo processes reports what one process reports for the same
    weights and data: val/loss (per modality too), val/acc and the evaluation callback's per-task
    accuracies, with 9 validation samples (rank 0 takes 5, rank 1 takes 4: Lightning's default
    sampler would count one twice) and one corrupt sample counted once in val/skipped."""
    from anymodal.train.cli import run

    data = tmp_path / "data"
    shutil.copytree(synth_root / "images", data / "images")
    shutil.copy(synth_root / "train.jsonl", data / "train.jsonl")
    val = (synth_root / "val.jsonl").read_text().splitlines()[::2][:9]  # several image tasks
    (data / "val.jsonl").write_text("\n".join(val) + "\n")
    bad = json.loads(val[3])  # taken by rank 1
    (data / next(s["path"] for s in bad["segments"] if s["type"] == "image")).write_bytes(b"not a png")

    sys.argv = sys.argv[:1]
    fit = ["--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--trainer.logger=false",
           "--trainer.callbacks=[]", f"--trainer.default_root_dir={tmp_path / 'fit'}"]
    run(["fit", "--config", str(_val_recipe(tmp_path, data, "fit")), *fit])
    (ckpt,) = (tmp_path / "fit").rglob("*.ckpt")

    run(["validate", "--config", str(_val_recipe(tmp_path, data, "single")), "--trainer.devices=1",
         f"--ckpt_path={ckpt}"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(Path(sys.executable).parent / "anymodal"), "validate", "--config",
                        str(_val_recipe(tmp_path, data, "ddp")), "--trainer.devices=2", "--trainer.strategy=ddp",
                        f"--ckpt_path={ckpt}"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sync_dist" not in r.stderr, r.stderr[-3000:]  # every epoch metric is reduced over the ranks

    single, ddp = _val_metrics(tmp_path / "single"), _val_metrics(tmp_path / "ddp")
    tokens = {k for k in single if k.endswith("tokens_per_s")}
    assert single.keys() == ddp.keys()
    for key in ("val/loss", "val/loss_text.bytes", "val/loss_special", "val/acc", "eval/acc"):  # images: no labels
        assert key in single, sorted(single)
    per_task = [k for k in single if k.startswith(("val/acc_", "eval/acc_"))]
    assert len(per_task) >= 4, sorted(single)
    assert single["val/skipped"] == ddp["val/skipped"] == 1
    for k in sorted(single.keys() - tokens - {"step", "epoch"}):
        assert ddp[k] == pytest.approx(single[k], rel=1e-5, abs=1e-6), k


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process(tmp_path, png):
    """The runner on 2 gloo processes (each answers its share, the ranks gather the answers)
    gives every rank the one-process report: multiple choice, exact match, POPE's corpus-level
    precision/recall and BLEU/CIDEr-D over all examples, predictions in order, one skip counted once."""
    import socket

    import torch.multiprocessing as mp
    from ddp_eval_worker import eval_model, eval_tasks, eval_worker

    from anymodal.evaluate import evaluate
    from anymodal.evaluate.runner import Shard

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(eval_worker, args=(2, port, str(png), str(bad), str(tmp_path)), nprocs=2, join=True)
    single = json.loads(json.dumps(evaluate(eval_model(), eval_tasks(png, bad), batch_size=2)))
    assert single["skipped"] == 1 and single["tasks"]["colour"]["n"] == 6
    for rank in (0, 1):
        report = json.loads((tmp_path / f"{rank}.json").read_text())
        assert report["overall"] == pytest.approx(single["overall"]) and report["skipped"] == 1, rank
        for name, want in single["tasks"].items():
            got = report["tasks"][name]
            assert got["n"] == want["n"] and got["predictions"] == want["predictions"], (rank, name)
            assert got["metrics"] == pytest.approx(want["metrics"]), (rank, name)
            assert got["chances"] == pytest.approx(want["chances"]), (rank, name)
    assert Shard(1, 2).take(list("abcde")) == ["b", "d"] and Shard().gather(["x"]) == ["x"]
    # FSDP: every forward is a collective, so every rank takes every example (and gathers nothing)
    lockstep = Shard(1, 2, lockstep=True)
    assert lockstep.take(list("abc")) == list("abc") and lockstep.gather(list("abc")) == list("abc")
    with pytest.raises(ValueError, match="rank must be in"):
        Shard(2, 2)
