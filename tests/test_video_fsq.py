"""video.fsq: the space-time FSQ tokenizer contract, its limits, MP4 files that real decoders open,
checkpoints (its own, refused by image.fsq and the other way round), and the recipe through the CLI."""

import random
from dataclasses import asdict

import numpy as np
import pytest
import torch

import anymodal as am
from anymodal.data.synthetic import draw_moving_shape, write_video
from anymodal.media.video import available_video_backends, load_video, save_video, video_info
from anymodal.tokenizers.fsq_core import psnr
from anymodal.tokenizers.video_fsq import VideoFSQAutoencoder, VideoFSQConfig

# 4 frames of 32x32 -> (2, 4, 4) codes of 20 ids; 32 px wide: decord 0.6 mis-decodes 16-px-wide frames
TINY = dict(frames=4, image_size=32, fps=4, levels=[5, 4], channels=8, downsample=3, time_downsample=1)


def _tok(**kw):
    return am.create_tokenizer("video.fsq", **{**TINY, "random_init": True, **kw})


def _clip(direction="right", frames=4, size=32, seed=0):
    return draw_moving_shape(random.Random(seed), size, frames, "red", "square", direction)  # (T, H, W, 3) uint8


def test_listed_and_contract_fixed_grid(tmp_path):
    assert "video.fsq" in am.list_tokenizers()
    tok = _tok()
    assert tok.kind == "discrete" and tok.modality == "video" and not tok.bidirectional
    assert tok.vocab_size == 20 and tok.fixed_grid == (2, 4, 4) and tok.fixed_length == 32
    # a tensor clip of another size and length, and an MP4 file: both become the fixed grid
    for seg in (am.Video(torch.rand(6, 3, 40, 24)), am.Video(str(_mp4(tmp_path / "a.mp4", _clip())))):
        block = tok.encode(seg)
        assert block.grid == (2, 4, 4) and len(block) == tok.num_tokens(seg) == 32
        assert 0 <= int(block.ids.min()) and int(block.ids.max()) < 20
    out = tok.decode(block.ids)
    assert out.shape == (4, 3, 32, 32) and 0 <= float(out.min()) and float(out.max()) <= 1
    seg = tok.make_segment(out)
    assert isinstance(seg, am.Video) and seg.tokenizer == "video.fsq" and seg.options["video_fps"] == 4


def _mp4(path, frames_uint8, fps=4):
    write_video(frames_uint8, path, fps)
    return path


def test_decoded_clip_saves_as_an_mp4_that_every_decoder_reads(tmp_path):
    tok = _tok()
    clip = tok.decode(torch.arange(32) % 20)
    path = tok.make_segment(clip).save(tmp_path / "gen.mp4")
    info = video_info(str(path))
    # bounded by the tokenizer's declared clip: its frames, its size, frames / fps seconds
    assert (info.num_frames, info.height, info.width) == (4, 32, 32)
    assert info.duration == pytest.approx(tok.seconds, abs=0.01) and tok.seconds == 1.0
    backends = available_video_backends()
    assert {"decord", "pyav"} <= set(backends), backends  # two real decoders, always
    for backend in backends:  # TorchCodec too where FFmpeg's libraries exist
        back = load_video(str(path), backend=backend)
        assert back.shape == (4, 3, 32, 32)
        assert (back - clip).abs().mean() < 0.06, backend  # crf 12: close to the decoded pixels


def test_save_video_refuses_bad_clips_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="even height and width"):
        save_video(torch.rand(2, 3, 15, 16), tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match=r"\(T, C, H, W\)"):
        save_video(torch.rand(3, 16, 16), tmp_path / "flat.mp4")
    with pytest.raises(ValueError, match="fps must be > 0"):
        save_video(torch.rand(2, 3, 16, 16), tmp_path / "x.mp4", fps=0)


def test_decode_names_the_tokenizer_and_the_bad_ids():
    tok = _tok()
    with pytest.raises(ValueError, match=r"video.fsq: decode needs 32 ids \(2x4x4\), got 31"):
        tok.decode(torch.zeros(31, dtype=torch.long))
    ids = torch.zeros(32, dtype=torch.long)
    ids[3], ids[7] = 20, -1
    with pytest.raises(ValueError, match=r"video.fsq: ids must lie in \[0, 20\); bad ids at positions \[3\]=20, \[7\]=-1"):
        tok.decode(ids)
    with pytest.raises(ValueError, match="integer ids"):
        tok.decode(torch.zeros(32))


def test_limits_bound_clips_in_and_out(tmp_path):
    # the tokenizer's own clips must fit its declared limits, or it is not built
    with pytest.raises(ValueError, match=r"exceed the declared limits \{'max_frames': 4\}"):
        _tok(max_frames=3)
    with pytest.raises(ValueError, match="max_seconds"):
        _tok(max_seconds=0.5)  # 4 frames at 4 fps last 1 s
    # an input over a limit is refused naming the file
    long = _mp4(tmp_path / "long.mp4", np.zeros((40, 32, 32, 3), np.uint8), fps=4)  # 10 s
    with pytest.raises(am.MediaError, match=r"long.mp4.*10.0 s, over the limit of 5 s"):
        _tok(max_seconds=5).encode(am.Video(str(long)))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*time_downsample"):
        _tok(frames=6, time_downsample=2, downsample=2)
    with pytest.raises(ValueError, match="time_downsample=3 must lie in"):
        _tok(time_downsample=3, downsample=2)
    with pytest.raises(ValueError, match="multiple of 8"):
        _tok(channels=12)
    with pytest.raises(ValueError, match="cfg_dropout"):
        _tok(cfg_dropout=1.0)
    with pytest.raises(ValueError, match=r"video.fsq needs trained weights: checkpoint=.*recipes/video-fsq.yaml"):
        am.create_tokenizer("video.fsq")


def test_encoder_is_tubelet_causal():
    """A code of time slice k depends on the frames of tubelet k only: changing the last two frames
    leaves the first slice's codes alone (the decoder, not causal, sees both ways)."""
    tok = _tok()
    x = torch.from_numpy(_clip(frames=4)).permute(0, 3, 1, 2).float() / 255
    y = x.clone()
    y[2:] = torch.rand(2, 3, 32, 32)
    a, b = tok.encode(am.Video(x)).ids.view(2, 16), tok.encode(am.Video(y)).ids.view(2, 16)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


def _ckpt(tmp_path, key="video_fsq", seed=3):
    """A checkpoint in the layout recipes/video-fsq.yaml's Lightning run writes."""
    cfg = VideoFSQConfig(**TINY)
    torch.manual_seed(seed)
    ae = VideoFSQAutoencoder(cfg)
    path = tmp_path / f"{key}.ckpt"
    torch.save({"hyper_parameters": {key: asdict(cfg)},
                "state_dict": {f"autoencoder.{k}": v for k, v in ae.state_dict().items()}}, path)
    return path, ae


def test_checkpoint_export_and_refusal_of_the_other_tokenizers_checkpoint(tmp_path):
    from anymodal.model import debug

    path, ae = _ckpt(tmp_path)
    tok = am.create_tokenizer("video.fsq", checkpoint=str(path))
    assert tok.pretrained and tok.fixed_length == 32
    x = torch.rand(1, 4, 3, 32, 32)
    assert torch.equal(tok.encode(am.Video(x[0])).ids, ae.eval().to_indices(x)[0])
    with pytest.raises(ValueError, match="disagree"):
        am.create_tokenizer("video.fsq", checkpoint=str(path), frames=8)
    # one tokenizer refuses the other's checkpoint by name, not by a shape error
    with pytest.raises(ValueError, match="image.fsq: .* is not a checkpoint of the image-fsq recipe"):
        am.create_tokenizer("image.fsq", checkpoint=str(path))
    img_path = tmp_path / "img.ckpt"
    torch.save({"hyper_parameters": {"fsq": {}}, "state_dict": {}}, img_path)
    with pytest.raises(ValueError, match=r"video.fsq: .* not a checkpoint of the video-fsq recipe .*'video_fsq'"):
        am.create_tokenizer("video.fsq", checkpoint=str(img_path))
    # a model export carries the weights
    m = am.AnyModal(["text.bytes", {"name": "video.fsq", "checkpoint": str(path)}], debug())
    m.export(tmp_path / "exp")
    path.unlink()
    tok2 = am.AnyModal.load(tmp_path / "exp").vocab.tokenizers[1]
    assert tok2.name == "video.fsq" and tok2.pretrained
    assert torch.equal(tok2.encode(am.Video(x[0])).ids, ae.to_indices(x)[0])


def test_autoencoder_learns_moving_shapes():
    """A few dozen steps lift reconstruction PSNR of moving shapes well above the untrained one."""
    torch.manual_seed(0)
    clips = [draw_moving_shape(random.Random(i), 32, 4, "red" if i % 2 else "blue", "square",
                               ["left", "right", "up", "down"][i % 4]) for i in range(8)]
    x = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() / 255  # (B, T, 3, S, S)
    ae = VideoFSQAutoencoder(VideoFSQConfig(**{**TINY, "levels": [8, 5, 5], "channels": 16}))
    before = psnr(ae(x).clamp(0, 1), x).mean().item()
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    for _ in range(40):
        loss = (ae(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = psnr(ae(x).clamp(0, 1), x).mean().item()
    assert after > before + 5, (before, after)


@pytest.mark.slow
def test_video_fsq_recipe_through_cli(tmp_path):
    """`anymodal fit --config recipes/video-fsq.yaml` (tiny overrides) writes the video suite and a
    checkpoint that video.fsq loads, logging held-out PSNR; a decoded clip is an MP4 two decoders open."""
    from conftest import ROOT, run_cli

    run = tmp_path / "run"
    r = run_cli("fit", "--config", str(ROOT / "recipes/video-fsq.yaml"), f"--data.root={tmp_path / 'data'}",
                "--data.synthetic.train_per_task=4", "--data.synthetic.val_per_task=2",
                "--data.synthetic.test_per_task=0", "--data.batch_size=4", "--model.fsq.channels=8",
                "--trainer.max_steps=2", "--trainer.val_check_interval=2", f"--trainer.default_root_dir={run}",
                "--trainer.logger=null", "--trainer.callbacks=null", "--trainer.enable_checkpointing=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "val/psnr" in r.stdout + r.stderr
    (ckpt,) = run.rglob("*.ckpt")
    tok = am.create_tokenizer("video.fsq", checkpoint=str(ckpt))
    assert tok.pretrained and tok.config.channels == 8 and tok.fixed_grid == (2, 8, 8)
    clip = tok.decode(tok.encode(am.Video(str(next((tmp_path / "data/videos/train").glob("*.mp4"))))).ids)
    path = tok.make_segment(clip).save(tmp_path / "recon.mp4")
    for backend in ("decord", "pyav"):
        assert load_video(str(path), backend=backend).shape == (8, 3, 32, 32)
