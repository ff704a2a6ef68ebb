"""The learned-query resampler (anymodal/model/resampler.py): a resampled span holds exactly N query
tokens in the stream, gradients reach the queries, packing and export keep logits, a recipe-style
config trains with the real Lightning Trainer, exports, loads and generates, explain maps the
queries back to the patches, and bad options fail in one line naming the tokenizer."""

import pytest
import torch
import yaml

import anymodal as am
from anymodal.constants import GRID_SUFFIX
from anymodal.model import debug
from anymodal.model.resampler import Resampler, ResamplerConfig, item_lengths
from anymodal.packing import pad

RESAMPLED = {"name": "image.patch", "patch_size": 8, "resample": {"queries": 4, "layers": 2}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return am.AnyModal(["text.bytes", RESAMPLED, {"name": "audio.mel", "n_mels": 16, "patch_frames": 8,
                                                  "resample": {"queries": 3, "layers": 1}}], debug()).eval()


def _image(h=24, w=40, seed=0):
    return am.Image(torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)))


def test_span_holds_the_queries_and_the_side_tensors_hold_the_patches(model):
    sample = ["What shape?", _image(24, 40), "and", _image(16, 16, 1)]
    s = model.builder.build(sample)
    k = model.vocab.index["image.patch"]
    assert int((s.modality == k).sum()) == 2 * 4  # two images, 4 queries each, whatever their size
    assert model.builder.num_tokens(sample) == len(s)
    assert s.vectors["image.patch"].shape == (3 * 5 + 2 * 2, 192)  # the patches still reach the model
    assert item_lengths(s.vectors["image.patch" + GRID_SUFFIX]) == [15, 4]
    first = (s.span == 1).nonzero().squeeze(1)
    # a sequence of queries: M-RoPE advances t, h, w together; media positions (k, 0, 0); bidirectional
    assert torch.equal(s.pos[:, first], (torch.arange(4) + s.pos[0, first[0]]).expand(3, 4))
    assert s.grid[:, first].tolist() == [[0, 1, 2, 3], [0] * 4, [0] * 4]
    assert bool(s.bidir[first].all())
    plain = am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8}], debug())
    assert int((plain.builder.build(sample).modality == k).sum()) == 15 + 4


def test_gradients_reach_the_queries_and_every_resampler_weight(model):
    model.train()
    try:
        b = model.batch([["q", _image(), "a"], ["b", am.Audio(torch.randn(1, 8000), sample_rate=16000)]])
        model(b).float().pow(2).mean().backward()
        for name, p in model.model.resamplers.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_packing_two_resampled_samples_equals_each_alone(model):
    a = ["What shape?", _image(24, 40), "circle"]
    b = ["Count", _image(16, 32, 3), am.Audio(torch.randn(1, 12000), sample_rate=16000), "two"]
    streams = [model.builder.build(x) for x in (a, b)]
    with torch.no_grad():
        packed = model(model.batch([a, b], seq_len=len(streams[0]) + len(streams[1])))  # one row
        assert packed.shape[0] == 1
        for s, start in zip(streams, (0, len(streams[0]))):
            alone = model(pad([s], model.vocab.pad))[0]
            torch.testing.assert_close(packed[0, start:start + len(s)], alone, rtol=1e-4, atol=1e-4)


def test_resampler_output_depends_on_its_item_only():
    torch.manual_seed(0)
    r = Resampler(32, ResamplerConfig(queries=2, layers=1, heads=4), max_grid=8)
    x, grid = torch.randn(5, 32), torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0], [0, 1, 1]])
    both = r(x, grid)
    assert both.shape == (4, 32)
    torch.testing.assert_close(r(x, grid, return_probs=True)[0], both)  # explain's explicit softmax = SDPA
    torch.testing.assert_close(both[2:], r(x[2:], grid[2:]))
    x2 = x.clone()
    x2[0] += 1
    assert torch.equal(r(x2, grid)[2:], both[2:]) and not torch.equal(r(x2, grid)[:2], both[:2])


def test_pooled_queries_start_local_and_learned_ones_start_alike():
    """init: pool gives query k the k-th run of the item's vectors before any training (each query
    a different part of the item, which explain's rollout starts from); init: learned queries all
    start as the same near-uniform mean of the item."""
    torch.manual_seed(0)
    x, grid = torch.randn(8, 32), torch.tensor([[0, 0, w] for w in range(8)])
    pool = Resampler(32, ResamplerConfig(queries=2, layers=1, heads=4, init="pool"), max_grid=8)
    learned = Resampler(32, ResamplerConfig(queries=2, layers=1, heads=4, init="learned"), max_grid=8)
    learned.load_state_dict(pool.state_dict())  # same weights: only the start of the queries differs
    x2 = x.clone()
    x2[7] += 3.0  # change the last vector of the item (in the second query's run)
    d_pool = (pool(x2, grid) - pool(x, grid)).norm(dim=1)
    d_learned = (learned(x2, grid) - learned(x, grid)).norm(dim=1)
    assert d_pool[1] > 3 * d_pool[0]  # the query whose run holds it moves, the other hardly
    assert d_learned[1] < 1.5 * d_learned[0]  # identical starts: both move alike
    c = pool.attribution(x, grid)[0]  # (2 queries, 8 inputs), rollout from the pooled start
    assert c[0, :4].sum() > 0.6 and c[1, 4:].sum() > 0.6
    torch.testing.assert_close(c.sum(1), torch.ones(2))


def test_recipe_config_trains_exports_loads_and_generates(synth_root, tmp_path):
    """A recipe-style config (YAML) with ``resample:`` through the real Lightning Trainer."""
    import lightning as L

    from anymodal.tokenizers.registry import check_tokenizer_specs
    from anymodal.train.data import AnyModalDataModule
    from anymodal.train.module import AnyModalModule

    recipe = yaml.safe_load(f"""
model:
  tokenizers:
    - text.bytes
    - {{name: image.patch, patch_size: 8, resample: {{queries: 4, layers: 1}}}}
  arch: {{dim: 32, n_layers: 1, n_heads: 2}}
  lr: 3.0e-3
data: {{root: {synth_root}, seq_len: 128, batch_size: 8}}
""")
    check_tokenizer_specs(recipe["model"]["tokenizers"])  # what `anymodal fit` checks first
    L.seed_everything(0)
    module = AnyModalModule(**recipe["model"])
    before = module.net.model.resamplers["image__patch"].queries.detach().clone()
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, AnyModalDataModule(**recipe["data"]))
    net = module.net.eval()
    assert not torch.equal(net.model.resamplers["image__patch"].queries, before)  # the queries learned
    loaded = am.AnyModal.load(net.export(tmp_path / "export"))
    assert loaded.config.resamplers == {"image.patch": {"queries": 4, "layers": 1, "heads": None, "init": "pool"}}
    prompt = ["What shape is it?", _image(32, 32)]
    b = net.batch([[*prompt, "circle"]])
    with torch.no_grad():
        assert torch.equal(net(b), loaded(b))
    out = loaded.generate(prompt, max_new_tokens=4)
    assert out.ids and out.ids == net.generate(prompt, max_new_tokens=4).ids
    assert out.ids == loaded.generate(prompt, max_new_tokens=4, use_cache=False).ids  # KV cache agrees
    batch = loaded.generate([prompt, ["Colour?", _image(16, 24, 2)]], max_new_tokens=3)  # left-padded batch
    assert batch[0].ids[:3] == out.ids[:3]


def test_explain_maps_the_queries_back_to_the_patches(model, tmp_path):
    exp = model.explain(["Where is it?", _image(24, 40)], answer="top")
    (m,) = exp.maps
    assert m.grid == (1, 3, 5) and m.per_token.shape == (3, 15)  # over the 15 patches, not the 4 queries
    assert m.queries.shape == (3, 4) and m.attribution.shape == (4, 15)
    torch.testing.assert_close(m.attribution.sum(1), torch.ones(4))
    torch.testing.assert_close(m.per_token.sum(1), m.queries.sum(1))  # the span's mass is kept
    assert 0 < m.share() < 1 and len(m.peak()) == 3
    exp.save(tmp_path / "map.png")
    audio = model.explain(["Beeps?", am.Audio(torch.randn(1, 16000), sample_rate=16000)], answer="2")
    assert audio.maps[0].grid[1:] == (1, 1) and audio.maps[0].grid[0] == audio.maps[0].per_token.shape[1] > 3


@pytest.mark.parametrize("resample, match", [
    ({"queries": 0}, r"tokenizer 'image.patch': resample.queries must be an int >= 1, got 0"),
    ({"queries": 2.5}, r"tokenizer 'image.patch': resample.queries must be an int >= 1"),
    ({"layers": -1}, r"tokenizer 'image.patch': resample.layers must be an int >= 1"),
    ({"querys": 4}, r"tokenizer 'image.patch': resample has unknown option\(s\) \['querys'\]"),
    (16, r"tokenizer 'image.patch': resample must be a mapping"),
    ({"queries": 100}, r"tokenizer 'image.patch': resample.queries=100 > model.arch.max_grid=64"),
    ({"heads": 3}, r"tokenizer 'image.patch': resample.heads=3 does not divide dim=64"),
    ({"init": "mean"}, r"tokenizer 'image.patch': resample.init must be one of \['pool', 'learned'\], got 'mean'"),
])
def test_bad_options_name_the_tokenizer(resample, match):
    with pytest.raises(ValueError, match=match):
        am.AnyModal(["text.bytes", {"name": "image.patch", "resample": resample}], debug())


def test_resample_on_a_discrete_tokenizer_is_refused():
    with pytest.raises(ValueError, match=r"tokenizer 'image.fsq' is discrete: resample: applies only to continuous"):
        am.AnyModal(["text.bytes", {"name": "image.fsq", "random_init": True, "resample": {"queries": 4}}], debug())
