"""Learning, not just shapes: a tiny model clearly beats chance on held-out synthetic questions."""

import lightning as L
import pytest
import torch

from anymodal.data import SynthConfig, synthesize
from anymodal.evaluate import evaluate_manifest
from anymodal.model import ModelConfig
from anymodal.train.data import AnyModalDataModule
from anymodal.train.module import AnyModalModule


@pytest.mark.slow
def test_tiny_model_learns_colour_question(tmp_path):
    L.seed_everything(0)
    cfg = SynthConfig(train_per_task=300, val_per_task=4, test_per_task=60, image_size=32, tasks=["image.colour"])
    synthesize(tmp_path, cfg)
    module = AnyModalModule(
        tokenizers=["text.bytes", {"name": "image.patch", "patch_size": 8, "max_tokens": 16}],
        arch=ModelConfig(dim=128, n_layers=2, n_heads=2, n_kv_heads=1), lr=3e-3, warmup_steps=10)
    dm = AnyModalDataModule(root=str(tmp_path), seq_len=256, batch_size=32)
    trainer = L.Trainer(max_steps=100, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, dm)
    report = evaluate_manifest(module.net, tmp_path / "test.jsonl")
    acc, chance = report["overall"]["accuracy"], report["overall"]["chance"]
    assert chance == pytest.approx(0.25)
    assert acc >= 0.8, report  # chance is 0.25


def test_untrained_model_is_near_chance(tmp_path):
    torch.manual_seed(0)
    import anymodal as am
    from anymodal.model import debug

    cfg = SynthConfig(train_per_task=1, val_per_task=1, test_per_task=40, image_size=32, tasks=["image.colour"])
    synthesize(tmp_path, cfg)
    m = am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8}], debug())
    report = evaluate_manifest(m, tmp_path / "test.jsonl")
    assert report["overall"]["accuracy"] <= 0.4
