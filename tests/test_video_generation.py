"""Video generation: the video tasks of the generation suite (real MP4 / PNG / WAV files whose
reference media pass the one scorer's checks), constrained decoding and guidance inside a video.fsq
span, and the whole path at tiny size through the real CLI (`anymodal fit` of recipes/video-fsq.yaml
then recipes/any-to-any-video.yaml, `anymodal eval --tasks gen-video`, `anymodal generate` writing
an MP4 that two decoders open)."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli, wire_to_open_spans

import anymodal as am
from anymodal.data.synthetic import VIDEO_GEN_TASKS, GenConfig, synthesize_gen
from anymodal.evaluate import Example, get_check
from anymodal.evaluate.checks import beep_attributes, video_attributes
from anymodal.media import load_image, load_video
from anymodal.segments import Segment

TINY_VIDEO = dict(frames=4, image_size=32, fps=4, levels=[5, 4], channels=8, downsample=3, time_downsample=1)


@pytest.fixture(scope="module")
def video_suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_video")
    synthesize_gen(root, GenConfig(train_per_task=4, val_per_task=2, test_per_task=12, tasks=list(VIDEO_GEN_TASKS)))
    return root


def test_video_suite_references_pass_the_checks(video_suite):
    """Every held-out reference clip shows what its prompt asks (read back from the decoded MP4 by
    the same checks that score a model), and the prompts' media agree with their targets."""
    recs = [json.loads(x) for x in (video_suite / "test.jsonl").read_text().splitlines()]
    assert {r["task"] for r in recs} == set(VIDEO_GEN_TASKS) and len(recs) == 36
    combined = get_check("video.colour"), get_check("video.shape"), get_check("video.direction")
    for r in recs:
        segs = {s["type"]: s for s in r["segments"]}
        ex = Example(r["id"], [], meta=r["target"])
        if r["task"] in ("gen.text_video", "gen.image_video"):
            clip = Segment(data=str(video_suite / segs["video"]["path"]), modality="video")
            assert all(c(clip, ex) == 1.0 for c in combined), r
            if r["task"] == "gen.text_video":
                t = r["target"]
                assert segs["text"]["text"] == f"a {t['colour']} {t['shape']} moving {t['direction']}"
            else:  # the picture is the clip's first frame
                first = load_video(str(video_suite / segs["video"]["path"]))[0]
                picture = load_image(str(video_suite / segs["image"]["path"]))
                assert (first - picture).abs().mean() < 0.03
        else:  # video -> audio: one steady beep per flash
            flashes = video_attributes(Segment(data=str(video_suite / segs["video"]["path"]), modality="video"))
            import soundfile as sf

            wave, rate = sf.read(str(video_suite / segs["audio"]["path"]))
            assert flashes["flashes"] == r["target"]["count"] == beep_attributes(wave, rate)["count"], r


@pytest.fixture
def video_model():  # fresh per test: wire_to_open_spans rewrites its weights in place
    torch.manual_seed(0)
    from anymodal.model import debug

    return am.AnyModal(["text.bytes", {"name": "video.fsq", **TINY_VIDEO, "random_init": True, "cfg_dropout": 0.1}],
                       debug()).eval()


def _span(model, ids):
    v = model.vocab
    start = ids.index(v.begin["video.fsq"])
    end = ids.index(v.end["video.fsq"], start)
    return [t - v.offset["video.fsq"] for t in ids[start + 1:end]]


def test_generated_video_span_stays_in_range_and_length(video_model, tmp_path):
    model = wire_to_open_spans(video_model, "video.fsq")
    tok = model.vocab.tokenizers[model.vocab.index["video.fsq"]]
    for kw in (dict(), dict(temperature=1.5, seed=1), dict(guidance=2.0), dict(guidance={"video.fsq": 3.0})):
        out = model.generate(["a red square moving left"], max_new_tokens=tok.fixed_length + 2, **kw)
        codes = _span(model, out.ids)
        assert len(codes) == tok.fixed_length == 32 and all(0 <= c < tok.vocab_size for c in codes), kw
        (clip,) = [s for s in out.segments if s.modality == "video"]
        assert isinstance(clip, am.Video) and clip.generated and clip.data.shape == (4, 3, 32, 32)
    path = clip.save(tmp_path / "gen.mp4")
    for backend in ("decord", "pyav"):
        assert load_video(str(path), backend=backend).shape == (4, 3, 32, 32)


def test_guidance_changes_video_codes_only_through_the_unconditional_branch(video_model):
    """Scale 1 is the conditional model; another scale mixes in the prompt-dropped branch."""
    model = video_model
    v = model.vocab
    forced = [v.begin["video.fsq"]] + [v.offset["video.fsq"] + i % 20 for i in range(32)] + [v.end["video.fsq"]]
    kw = dict(max_new_tokens=len(forced), forced=forced, return_logits=True, stop_at_eos=False)
    _, cond = model.generate(["a red square moving left"], **kw)
    _, same = model.generate(["a red square moving left"], guidance={"video.fsq": 1.0}, **kw)
    _, guided = model.generate(["a red square moving left"], guidance={"video.fsq": 3.0}, **kw)
    torch.testing.assert_close(same, cond)
    assert not torch.allclose(guided[0, 1:33], cond[0, 1:33])


TINY_DECODER = ["--model.arch.dim=32", "--model.arch.n_layers=1", "--model.arch.n_heads=2", "--model.arch.n_kv_heads=1"]
NO_LOGS = ["--trainer.logger=null", "--trainer.callbacks=null", "--trainer.enable_checkpointing=true"]


@pytest.mark.slow
def test_video_fsq_then_any_to_any_video_then_eval_and_generate(tmp_path):
    pytest.importorskip("encodec")  # the recipe's audio tokenizer
    # stage 1: the video autoencoder, written where recipes/any-to-any-video.yaml looks for it
    r = run_cli("fit", "--config", str(ROOT / "recipes/video-fsq.yaml"), "--data.synthetic.train_per_task=8",
                "--data.synthetic.val_per_task=2", "--data.synthetic.test_per_task=3", "--data.batch_size=4",
                "--model.fsq.channels=8", "--trainer.default_root_dir=runs/video-fsq", "--trainer.max_steps=3",
                "--trainer.val_check_interval=3", *NO_LOGS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (fsq,) = (tmp_path / "runs/video-fsq").rglob("*.ckpt")
    (tmp_path / "runs/video-fsq/checkpoints").mkdir(exist_ok=True)
    shutil.copy(fsq, tmp_path / "runs/video-fsq/checkpoints/last.ckpt")
    data = tmp_path / "runs/any-to-any-video/data"
    assert {json.loads(x)["task"] for x in (data / "test.jsonl").read_text().splitlines()} == set(VIDEO_GEN_TASKS)

    # stage 2: the generator, on the suite stage 1 wrote
    r = run_cli("fit", "--config", str(ROOT / "recipes/any-to-any-video.yaml"), "--data.batch_size=8",
                "--data.seq_len=256", *TINY_DECODER, "--trainer.default_root_dir=runs/any-to-any-video",
                "--trainer.max_steps=40", "--trainer.val_check_interval=40", "--model.warmup_steps=5", *NO_LOGS,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (ckpt,) = (tmp_path / "runs/any-to-any-video").rglob("*.ckpt")

    # the one scorer: every held-out prompt generated from and scored
    r = run_cli("eval", "--model", str(ckpt), "--data", str(data), "--tasks", "gen-video", "--out", "gen", "--quiet",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    tasks = json.loads((tmp_path / "gen/report.json").read_text())["tasks"]
    assert set(tasks) == set(VIDEO_GEN_TASKS) and all(t["status"] == "ok" and t["n"] == 3 for t in tasks.values())
    for name in ("gen.text_video", "gen.image_video"):  # video.fsq has trained weights: its clips are judged
        assert tasks[name]["metric"] == "check:video.colour+video.shape+video.direction", tasks[name]
        assert "refused" not in tasks[name], tasks[name]
    audio = tasks["gen.video_audio"]  # random EnCodec: codes scored, beeps refused with the reason
    assert audio["metric"] == "token_accuracy" and "pretrained=False" in audio["refused"]["check:audio.beeps"]
    assert audio["chance"] == audio["metrics"]["prompt_blind_accuracy"]

    # `anymodal generate` writes the clip as an MP4 that two decoders open
    out = tmp_path / "media"
    r = run_cli("generate", "--model", str(ckpt), "--prompt", "a red square moving left", "--max-new-tokens", "140",
                "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (f,) = out.glob("*.mp4")
    clips = [load_video(str(f), backend=b) for b in ("decord", "pyav")]
    assert clips[0].shape == clips[1].shape == (8, 3, 32, 32)
    assert np.allclose(clips[0].numpy(), clips[1].numpy(), atol=2 / 255)
