"""The any-to-any path end to end through the real CLI, at tiny size: `recipes/image-fsq.yaml`
writes the generation suite and the FSQ checkpoint, `recipes/any-to-any.yaml` (its tokenizers as
written: text.bytes, that image.fsq checkpoint, a random-init EnCodec) trains on it, and
`anymodal eval --tasks gen` scores what the model generates with the one set of generation checks
(:mod:`anymodal.evaluate.checks`); `anymodal generate` writes media files that Pillow and
soundfile open. The full-size numbers are in the recipe and the closing notes; this checks that
the tiny model learned something each score can see, against the floor beside it."""

import json
import shutil

import pytest
from conftest import ROOT, run_cli

TINY_DECODER = ["--model.arch.dim=32", "--model.arch.n_layers=1", "--model.arch.n_heads=2", "--model.arch.n_kv_heads=1"]
NO_LOGS = ["--trainer.logger=null", "--trainer.callbacks=null", "--trainer.enable_checkpointing=true"]
GEN_TASKS = {"gen.text_image", "gen.text_audio", "gen.image_audio"}


@pytest.mark.slow
def test_fsq_then_any_to_any_recipes_then_eval_gen(tmp_path):
    pytest.importorskip("encodec")  # the recipe's audio tokenizer
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
    assert {json.loads(x)["task"] for x in (data / "test.jsonl").read_text().splitlines()} == GEN_TASKS

    # stage 2: the generator, on the suite stage 1 wrote; long enough to learn that a media span
    # (its begin marker, then codes) follows each prompt
    r = run_cli("fit", "--config", str(ROOT / "recipes/any-to-any.yaml"), "--data.batch_size=8", *TINY_DECODER,
                "--trainer.default_root_dir=runs/any-to-any", "--trainer.max_steps=60",
                "--trainer.val_check_interval=60", "--model.warmup_steps=5", *NO_LOGS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (ckpt,) = (tmp_path / "runs/any-to-any").rglob("*.ckpt")

    # the scorer CI and users run: every held-out prompt is generated from and scored
    r = run_cli("eval", "--model", str(ckpt), "--data", str(data), "--tasks", "gen", "--out", "gen", "--quiet",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    tasks = json.loads((tmp_path / "gen/report.json").read_text())["tasks"]
    assert set(tasks) == GEN_TASKS and all(t["status"] == "ok" and t["n"] == 3 for t in tasks.values()), tasks
    image, audio = tasks["gen.text_image"], tasks["gen.text_audio"]
    # the FSQ decoder has trained weights: its images are read back; every prompt got one
    assert image["metric"] == "check:image.colour+image.shape" and "refused" not in image
    assert image["metrics"]["no_output"] == 0.0, image
    # the EnCodec weights are random: beeps are not counted, and the report says why
    for t in (audio, tasks["gen.image_audio"]):
        assert t["metric"] == "token_accuracy"
        assert "audio.encodec has random weights (pretrained=False)" in t["refused"]["check:audio.beeps"]
    # 60 steps learn the codes that every reference sound shares (the silence before and between
    # beeps): well above always emitting the single most common code
    m = audio["metrics"]
    assert m["token_accuracy"] > m["majority_code_accuracy"] + 0.1, m
    assert audio["chance"] == m["prompt_blind_accuracy"]  # the table's chance column: the prompt-blind floor

    # the decoded media are files other tools open
    import soundfile as sf
    from PIL import Image

    for prompt, ext in (("a red circle at the top left", "png"), ("three beeps, rising", "wav")):
        out = tmp_path / "media" / ext
        r = run_cli("generate", "--model", str(ckpt), "--prompt", prompt, "--max-new-tokens", "200", "--out",
                    str(out), cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        (f,) = out.glob(f"*.{ext}")
        if ext == "png":
            with Image.open(f) as im:
                assert im.size == (32, 32)
        else:
            x, rate = sf.read(f)
            assert rate == 24000 and len(x) == 14400  # 0.6 s
