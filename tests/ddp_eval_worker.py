"""The worker of ``test_ddp.py::test_sharded_evaluation_equals_one_process``: one rank of a gloo
group evaluating with its :class:`anymodal.evaluate.runner.Shard`. A module of its own, so the
spawned processes import torch and the evaluation code only (not Lightning)."""

import json
import os
from pathlib import Path

import torch


def eval_tasks(png: Path, bad: Path) -> list:
    """Three tasks of 7 examples (rank 0 answers 4, rank 1 answers 3), one metric family each, and
    one example whose image does not decode (rank 1's): counted once under ``skipped``."""
    from anymodal import Image, Text
    from anymodal.evaluate import Example, Task

    colours = ["red", "green", "blue"]
    choice = [Example(f"c{i}", [Text(f"Colour {i}?"), Image(png if i != 3 else bad)], [colours[i % 3]], colours)
              for i in range(7)]
    pope = [Example(f"p{i}", [Text(f"Is {i} even?")], ["yes" if i % 2 == 0 else "no"]) for i in range(7)]
    caption = [Example(f"t{i}", [Text(f"Say {i}:")], [f"number {i}", f"it is {i}"]) for i in range(7)]
    return [Task("colour", choice, ["choice", "exact_match"], max_new_tokens=4),
            Task("even", pope, ["pope"], max_new_tokens=4), Task("say", caption, ["bleu", "cider"], max_new_tokens=6)]


def eval_model():
    import anymodal as am
    from anymodal.model import ModelConfig

    torch.manual_seed(0)  # the same weights in every process
    return am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8}],
                       ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1)).eval()


def eval_worker(rank: int, world: int, port: int, png: str, bad: str, out: str) -> None:
    import torch.distributed as dist

    from anymodal.evaluate import evaluate
    from anymodal.evaluate.runner import Shard

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        shard = Shard.from_process_group()
        assert shard == Shard(rank, world)
        report = evaluate(eval_model(), eval_tasks(Path(png), Path(bad)), batch_size=2, shard=shard)
        Path(out, f"{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()
