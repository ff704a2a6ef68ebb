"""image.fsq: finite scalar quantization, the tokenizer contract, checkpoints, training."""

import pickle
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anymodal as am
from anymodal.data.synthetic import draw_gen_target as draw_scene
from anymodal.evaluate.checks import image_attributes
from anymodal.tokenizers.image_fsq import FSQ, FSQAutoencoder, FSQConfig, psnr

SMALL = dict(image_size=16, levels=[5, 4], channels=16, downsample=2)  # 4x4 codes, 20 ids


@given(st.lists(st.integers(2, 9), min_size=1, max_size=4), st.integers(0, 2**31 - 1))
@settings(max_examples=30, deadline=None)
def test_indices_roundtrip_and_range(levels, seed):
    q = FSQ(levels)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, q.codebook_size, (50,), generator=g)
    codes = q.indices_to_codes(idx)
    assert codes.shape == (50, len(levels)) and codes.abs().max() <= 1
    assert torch.equal(q.codes_to_indices(codes), idx)


def test_quantizer_uses_exactly_the_levels_and_passes_gradients():
    q = FSQ([8, 5, 3])
    z = torch.linspace(-20, 20, 4001)[:, None].expand(-1, 3).clone().requires_grad_(True)
    out = q(z)
    for d, L in enumerate([8, 5, 3]):
        assert out[:, d].unique().numel() == L  # every level reachable, no other value
    assert q.codes_to_indices(out).unique().numel() <= q.codebook_size
    out.sum().backward()  # straight-through: the bounded tanh's gradient reaches z
    assert z.grad is not None and (z.grad.abs() > 0).any()


def test_tokenizer_contract_fixed_grid():
    tok = am.create_tokenizer("image.fsq", **SMALL, random_init=True)
    assert tok.vocab_size == 20 and tok.fixed_grid == (1, 4, 4) and tok.fixed_length == 16
    assert tok.kind == "discrete" and not tok.bidirectional
    img = am.Image(torch.rand(3, 40, 24))  # any size is resized to the fixed grid
    block = tok.encode(img)
    assert block.grid == (1, 4, 4) and len(block) == tok.num_tokens(img) == 16
    assert 0 <= int(block.ids.min()) and int(block.ids.max()) < 20
    out = tok.decode(block.ids)
    assert out.shape == (3, 16, 16) and 0 <= float(out.min()) and float(out.max()) <= 1
    seg = tok.make_segment(out)
    assert isinstance(seg, am.Image) and seg.tokenizer == "image.fsq"


def test_decode_rejects_bad_ids():
    tok = am.create_tokenizer("image.fsq", **SMALL, random_init=True)
    with pytest.raises(ValueError, match="16 ids"):
        tok.decode(torch.zeros(15, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        tok.decode(torch.full((16,), 20))


def test_random_weights_only_when_asked(tmp_path):
    with pytest.raises(ValueError, match=r"image.fsq needs trained weights: checkpoint=.*recipes/image-fsq.yaml"
                                         r".*random_init=True"):
        am.create_tokenizer("image.fsq", **SMALL)
    with pytest.raises(ValueError, match="not both"):
        am.create_tokenizer("image.fsq", checkpoint=str(tmp_path / "x.ckpt"), random_init=True)
    tok = am.create_tokenizer("image.fsq", **SMALL, random_init=True)
    assert not tok.pretrained
    # an export of random weights carries them, and says they are random after loading
    m = am.AnyModal(["text.bytes", {"name": "image.fsq", **SMALL, "random_init": True}], am_debug())
    m.export(tmp_path / "exp")
    tok2 = am.AnyModal.load(tmp_path / "exp").vocab.tokenizers[1]
    assert tok2.name == "image.fsq" and not tok2.pretrained
    x = am.Image(torch.rand(3, 16, 16))
    assert torch.equal(tok2.encode(x).ids, tok.encode(x).ids)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="divisible"):
        am.create_tokenizer("image.fsq", random_init=True, image_size=30, downsample=2)
    with pytest.raises(ValueError, match="levels"):
        am.create_tokenizer("image.fsq", random_init=True, levels=[1, 4])
    with pytest.raises(ValueError, match="cfg_dropout"):
        am.create_tokenizer("image.fsq", random_init=True, cfg_dropout=1.5)


def _ckpt(tmp_path, cfg: FSQConfig, seed=3):
    """A checkpoint in the layout the image-fsq recipe's Lightning run writes."""
    torch.manual_seed(seed)
    ae = FSQAutoencoder(cfg)
    from dataclasses import asdict

    path = tmp_path / "fsq.ckpt"
    torch.save({"hyper_parameters": {"fsq": asdict(cfg)},
                "state_dict": {f"autoencoder.{k}": v for k, v in ae.state_dict().items()}}, path)
    return path, ae


def test_checkpoint_loads_with_its_shape_and_export_roundtrips(tmp_path):
    path, ae = _ckpt(tmp_path, FSQConfig(**SMALL))
    tok = am.create_tokenizer("image.fsq", checkpoint=str(path))  # shape taken from the checkpoint
    assert tok.pretrained and tok.fixed_length == 16
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(tok.encode(am.Image(x[0])).ids, ae.eval().to_indices(x)[0])
    with pytest.raises(ValueError, match="disagree"):
        am.create_tokenizer("image.fsq", checkpoint=str(path), image_size=32)
    # a model export carries the weights: the reloaded model's tokenizer encodes the same
    m = am.AnyModal(["text.bytes", {"name": "image.fsq", "checkpoint": str(path)}], am_debug())
    m.export(tmp_path / "exp")
    path.unlink()  # the export must not need the recipe's checkpoint any more
    m2 = am.AnyModal.load(tmp_path / "exp")
    tok2 = m2.vocab.tokenizers[m2.vocab.index["image.fsq"]]
    assert torch.equal(tok2.encode(am.Image(x[0])).ids, ae.to_indices(x)[0])


def am_debug():
    from anymodal.model import debug

    return debug()


def test_pickle_payload_checkpoint_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.ckpt"
    with open(p, "wb") as f:
        pickle.dump({"hyper_parameters": {"fsq": {}}, "state_dict": Evil()}, f)
    with pytest.raises(ValueError, match="refused"):
        am.create_tokenizer("image.fsq", checkpoint=str(p))
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        am.create_tokenizer("image.fsq", checkpoint=str(tmp_path / "nope.ckpt"))


@pytest.mark.slow
def test_autoencoder_learns_synthetic_shapes():
    """A few dozen steps already lift reconstruction PSNR well above the untrained one."""
    torch.manual_seed(0)
    rng = random.Random(0)
    from anymodal.data.synth import COLOURS, POSITIONS, SHAPES

    imgs = [draw_scene(rng, 16, rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(POSITIONS))
            for _ in range(32)]
    x = torch.stack([torch.tensor(np.asarray(i)).permute(2, 0, 1).float() / 255 for i in imgs])
    ae = FSQAutoencoder(FSQConfig(image_size=16, levels=[8, 5, 5], channels=16))
    before = psnr(ae(x).clamp(0, 1), x).mean().item()
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    for _ in range(60):
        loss = (ae(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = psnr(ae(x).clamp(0, 1), x).mean().item()
    assert after > before + 5, (before, after)


def test_image_check_reads_drawn_attributes_and_rejects_others():
    rng = random.Random(1)
    from anymodal.data.synth import COLOURS, POSITIONS, SHAPES

    for colour in COLOURS:
        for shape in SHAPES:
            for position in POSITIONS:
                a = image_attributes(draw_scene(rng, 32, colour, shape, position))
                assert (a["colour"], a["shape"], a["position"]) == (colour, shape, position)
    blank = image_attributes(torch.zeros(3, 32, 32))
    assert blank["shape"] is None and blank["colour"] is None


@pytest.mark.slow
def test_fsq_recipe_through_cli(tmp_path):
    """`anymodal fit --config recipes/image-fsq.yaml` (tiny overrides) writes a checkpoint that
    image.fsq loads."""
    from conftest import ROOT, run_cli

    run = tmp_path / "run"
    r = run_cli("fit", "--config", str(ROOT / "recipes/image-fsq.yaml"), f"--data.root={tmp_path / 'data'}",
                "--data.synthetic.train_per_task=8", "--data.synthetic.val_per_task=4",
                "--data.synthetic.test_per_task=0", "--data.synthetic.tasks=[gen.text_image]",
                "--data.batch_size=4", "--model.fsq.channels=16", "--trainer.max_steps=3",
                "--trainer.val_check_interval=3", f"--trainer.default_root_dir={run}", "--trainer.logger=null",
                "--trainer.callbacks=null", "--trainer.enable_checkpointing=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpts = list(run.rglob("*.ckpt"))
    assert ckpts, list(run.rglob("*"))
    tok = am.create_tokenizer("image.fsq", checkpoint=str(ckpts[0]))
    assert tok.pretrained and tok.config.channels == 16 and tok.fixed_length == 64
