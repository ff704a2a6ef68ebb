"""The any-to-any path end to end through the real CLI, at tiny size: `recipes/image-fsq.yaml`
writes the generation suite and the FSQ checkpoint, `recipes/any-to-any.yaml` (its tokenizers as
written: text.bytes, that image.fsq checkpoint, a random-init EnCodec) trains on it, and the
scorer `python -m anymodal.data.synth_gen` decodes what the model generates into files that
Pillow and soundfile open. The full-size numbers (pass rate, token accuracy) are in the recipe
and the closing notes; this checks the mechanics on every CI run."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli

pytest.importorskip("encodec")

TINY_DECODER = ["--model.arch.dim=32", "--model.arch.n_layers=1", "--model.arch.n_heads=2", "--model.arch.n_kv_heads=1"]
NO_LOGS = ["--trainer.logger=null", "--trainer.callbacks=null", "--trainer.enable_checkpointing=true"]


@pytest.mark.slow
def test_fsq_then_any_to_any_recipes_then_the_scorer(tmp_path):
    # stage 1: the FSQ autoencoder, written where recipes/any-to-any.yaml looks for it
    r = run_cli("fit", "--config", str(ROOT / "recipes/image-fsq.yaml"), "--data.synthetic.train_per_task=8",
                "--data.synthetic.val_per_task=4", "--data.synthetic.test_per_task=3", "--data.batch_size=4",
                "--model.fsq.channels=16", "--trainer.default_root_dir=runs/image-fsq", "--trainer.max_steps=3",
                "--trainer.val_check_interval=3", *NO_LOGS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (fsq,) = (tmp_path / "runs/image-fsq").rglob("*.ckpt")
    (tmp_path / "runs/image-fsq/checkpoints").mkdir(exist_ok=True)
    shutil.copy(fsq, tmp_path / "runs/image-fsq/checkpoints/last.ckpt")
    data = tmp_path / "runs/any-to-any/data"
    assert {json.loads(x)["task"] for x in (data / "test.jsonl").read_text().splitlines()} == {
        "gen.text_image", "gen.text_audio", "gen.image_audio"}

    # stage 2: the generator, on the suite stage 1 wrote; long enough to learn that a media span
    # (its begin marker, then codes) follows each prompt, so the scorer has media to decode
    r = run_cli("fit", "--config", str(ROOT / "recipes/any-to-any.yaml"), "--data.batch_size=8", *TINY_DECODER,
                "--trainer.default_root_dir=runs/any-to-any", "--trainer.max_steps=60",
                "--trainer.val_check_interval=60", "--model.warmup_steps=5", *NO_LOGS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (ckpt,) = (tmp_path / "runs/any-to-any").rglob("*.ckpt")

    # the scorer: every held-out prompt is generated from; the media that come out are decoded
    # to files that other tools open
    r = subprocess.run([sys.executable, "-m", "anymodal.data.synth_gen", "--model", str(ckpt), "--out", "gen"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "gen/report.json").read_text())
    assert set(report["tasks"]) == {"gen.text_image", "gen.text_audio", "gen.image_audio"}
    tasks = report["tasks"]
    assert all(t["n"] == 3 for t in tasks.values()), tasks
    # 60 tiny steps: media come out (scores mean nothing yet), so there are files to check
    assert tasks["gen.text_image"]["emitted"] > 0 and tasks["gen.text_audio"]["emitted"] > 0, tasks
    assert 0.0 <= report["tasks"]["gen.text_audio"]["token_accuracy"] <= 1.0
    import soundfile as sf
    from PIL import Image

    pngs, wavs = sorted((tmp_path / "gen").rglob("*.png")), sorted((tmp_path / "gen").rglob("*.wav"))
    assert pngs and wavs, sorted(p.name for p in (tmp_path / "gen").rglob("*"))
    for p in pngs:
        with Image.open(p) as im:
            assert im.size == (32, 32)
    for p in wavs:
        x, rate = sf.read(p)
        assert rate == 24000 and len(x) > 0
