"""Staged training from pretrained parts: trainable groups keep frozen weights bit-identical,
per-group learning rates, loading a previous stage strictly, captions for stage 1, and the two
stage recipes end to end through the real CLI from an imported tiny LM."""

import json
import shutil

import pytest
import torch

import anymodal as am
from anymodal.model import ModelConfig, lm_loss
from anymodal.pretrained import TrainableGroups, from_hf, load_hf_weights, load_weights, read_weights
from anymodal.pretrained.stages import group_of
from conftest import ROOT, run_cli

pytest.importorskip("transformers")
from test_pretrained import make_tiny_lm  # noqa: E402 - needs transformers

PATCH = {"name": "image.patch", "patch_size": 8, "max_tokens": 16}


def _sample():
    return [["What shape is it?", am.Image(torch.rand(3, 32, 32)), am.Text("circle", role="target")],
            ["Describe the image.", am.Image(torch.rand(3, 24, 32)), am.Text("a red square", role="target")]]


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


def _train(model, groups, steps=3, lr=1e-2):
    opt = torch.optim.AdamW(groups.optimizer_groups(model.model, lr=lr, weight_decay=0.1))
    batch = model.batch(_sample())
    for _ in range(steps):
        loss, _ = lm_loss(model(batch), batch.labels, batch.loss_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


@pytest.mark.parametrize("tie", [False, True])
def test_stage1_groups_keep_frozen_weights_bit_identical(tmp_path, tie):
    lm = make_tiny_lm(tmp_path / "lm", kind="llama", tie=tie)
    model = from_hf(lm, [PATCH], ModelConfig(projectors={"image.patch": "mlp2"}))
    groups = TrainableGroups(model, ["projectors", "new_tokens"], group_lr={"projectors": 3e-3})
    before = _snapshot(model)
    opt = _train(model, groups)
    after = _snapshot(model)
    n = model.vocab.text.vocab_size
    for k in before:
        g = group_of(k)
        if g == "decoder":
            assert torch.equal(before[k], after[k]), k
        elif g in ("embeddings", "head"):
            assert torch.equal(before[k][:n], after[k][:n]), f"{k}: a text row moved"
            assert not torch.equal(before[k][n:], after[k][n:]), f"{k}: the new rows did not train"
        else:
            assert not torch.equal(before[k], after[k]), f"{k}: a projector did not train"
    frozen = [k for k, p in model.model.named_parameters() if not p.requires_grad]
    assert frozen and all(group_of(k) == "decoder" for k in frozen)
    lrs = {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert lrs["projectors/decay"] == (3e-3, 0.1) and lrs["new_tokens/no_decay"] == (1e-2, 0.0)
    assert not any(name.startswith("decoder") for name in lrs)
    counts = groups.counts(model.model)
    d, extra = model.config.dim, model.config.vocab_size - n
    assert counts["new_tokens"] == extra * d * (1 if tie else 2)


def test_stage2_groups_and_errors(tmp_path):
    lm = make_tiny_lm(tmp_path / "lm", kind="qwen2")
    model = from_hf(lm, [PATCH])
    groups = TrainableGroups(model, ["projectors", "new_tokens", "decoder"], group_lr={"decoder": 1e-4})
    before = _snapshot(model)
    _train(model, groups)
    after = _snapshot(model)
    assert not torch.equal(before["blocks.0.attn.wq.bias"], after["blocks.0.attn.wq.bias"])  # Qwen2 biases train
    n = model.vocab.text.vocab_size
    assert torch.equal(before["embed.weight"][:n], after["embed.weight"][:n])
    with pytest.raises(ValueError, match="unknown groups \\['decoders'\\]"):
        TrainableGroups(model, ["decoders"])
    with pytest.raises(ValueError, match="nothing would train"):
        TrainableGroups(model, [])
    with pytest.raises(ValueError, match="\\['decoder'\\], which do not train"):
        TrainableGroups(model, ["projectors"], group_lr={"decoder": 1e-4})
    everything = TrainableGroups(model, None)
    assert all(p.requires_grad for p in model.model.parameters()) and not everything.row_masked


def test_init_from_is_strict(tmp_path):
    lm = make_tiny_lm(tmp_path / "lm", kind="llama")
    a = from_hf(lm, [PATCH])
    with torch.no_grad():
        a.model.input_proj["image__patch"].weight.add_(1.0)
    exp = a.export(tmp_path / "stage1")
    b = from_hf(lm, [PATCH])
    load_weights(b, exp)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    meta, state = read_weights(exp)
    assert meta["format"] == "anymodal" and "embed.weight" in state
    wrong_vocab = from_hf(lm, [PATCH, {"name": "image.fsq", "random_init": True}])
    with pytest.raises(ValueError, match="vocabulary differs"):
        load_weights(wrong_vocab, exp)
    wrong_shape = from_hf(lm, [{**PATCH, "patch_size": 4}])
    with pytest.raises(ValueError, match="input_proj.image__patch.weight: shape"):
        load_weights(wrong_shape, exp)
    with pytest.raises(FileNotFoundError, match="neither an anymodal export folder nor a .ckpt"):
        load_weights(b, tmp_path / "nope.ckpt")


def test_captions_are_balanced_and_described(tmp_path):
    from anymodal.data.manifest import read_manifest
    from anymodal.data.synth_caption import CaptionConfig, synthesize_captions

    paths = synthesize_captions(tmp_path, CaptionConfig(train=96, val=4, test=4, image_size=32))
    recs = read_manifest(paths["train"])
    scenes = [r.answer for r in recs if r.answer.startswith("a ")]
    counts = [r.answer for r in recs if not r.answer.startswith("a ")]
    assert len(scenes) == len(counts) == 48 and len(set(scenes)) == 48  # one full round of 4x3x4 combinations
    assert {c.split()[0] for c in counts} == {"one", "two", "three", "four"}
    r = recs[0]
    assert [s.modality for s in r.segments] == ["text", "image", "text"] and r.segments[-1].role == "target"
    assert r.segments[-1].data == r.answer and r.task == "caption"
    stamp = (tmp_path / "captions" / "captions.json").stat().st_mtime_ns
    synthesize_captions(tmp_path, CaptionConfig(train=96, val=4, test=4, image_size=32))  # same config: kept
    assert (tmp_path / "captions" / "captions.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="kinds"):
        CaptionConfig(kinds=["poem"])


def _fit(recipe, *args, cwd):
    r = run_cli("fit", "--config", str(ROOT / "recipes" / recipe), "--trainer.logger=null",
                "--trainer.callbacks=null", "--trainer.enable_checkpointing=true", "--trainer.val_check_interval=3",
                "--data.seq_len=256", "--data.batch_size=8", "--model.val_generate=4", *args, cwd=cwd)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _accuracy(model, manifest, limit=16):
    from anymodal.evaluate import evaluate_manifest

    return evaluate_manifest(model, manifest, limit=limit)["overall"]["accuracy"]


@pytest.mark.slow
def test_two_stage_recipes_through_cli(tmp_path):
    """Stage 1 (projectors + new rows) then stage 2 (+ decoder) from an imported tiny Qwen2, through
    `anymodal fit`; the LM stays bit-identical through stage 1; the export generates what the
    checkpoint generates."""
    lm = make_tiny_lm(tmp_path / "lm", kind="qwen2", dim=32, layers=2)
    data, run1, run2 = tmp_path / "data", tmp_path / "stage1", tmp_path / "stage2"
    _fit("stage1-align.yaml", f"--model.init_from_hf={lm}", f"--data.root={data}", "--data.captions.train=48",
         "--data.captions.val=4", "--data.captions.test=8", "--data.captions.image_size=32",
         "--trainer.max_steps=6", f"--trainer.default_root_dir={run1}", cwd=tmp_path)
    ckpt1 = sorted(run1.rglob("*.ckpt"))[-1]
    meta, state1 = read_weights(ckpt1)
    assert meta["tokenizers"][0] == {"name": "text.hf", "path": str(lm.resolve())}
    ref = am.AnyModal.from_meta(meta)  # what stage 1 started from: the LM, fresh projectors
    load_hf_weights(ref, lm)
    start = ref.model.state_dict()
    n = ref.vocab.text.vocab_size
    for k, v in start.items():
        g = group_of(k)
        if g == "decoder":
            assert torch.equal(state1[k], v), f"stage 1 moved the frozen {k}"
        elif g in ("embeddings", "head"):
            assert torch.equal(state1[k][:n], v[:n]), f"stage 1 moved text rows of {k}"
            assert not torch.equal(state1[k][n:], v[n:])
    stage1 = am.AnyModal.load(ckpt1)
    acc1 = _accuracy(stage1, data / "captions" / "test.jsonl")

    _fit("stage2-instruct.yaml", f"--model.init_from_hf={lm}", f"--model.init_from={ckpt1}", f"--data.root={data}",
         "--data.synthetic.train_per_task=12", "--data.synthetic.val_per_task=2", "--data.synthetic.test_per_task=4",
         "--data.synthetic.image_size=32", "--trainer.max_steps=6", f"--trainer.default_root_dir={run2}", cwd=tmp_path)
    ckpt2 = sorted(run2.rglob("*.ckpt"))[-1]
    _, state2 = read_weights(ckpt2)
    assert not torch.equal(state2["blocks.0.mlp.w1.weight"], state1["blocks.0.mlp.w1.weight"])  # the LM trains now
    assert torch.equal(state2["embed.weight"][:n], start["embed.weight"][:n])  # its text rows do not

    exp = tmp_path / "export"
    r = run_cli("export", "--ckpt", str(ckpt2), "--out", str(exp))
    assert r.returncode == 0, r.stderr
    from_ckpt = am.AnyModal.load(ckpt2)
    prompts = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()[:4]]
    from anymodal.segments import segment_from_dict

    prompts = [[segment_from_dict(s, data) for s in p["segments"] if s.get("role") != "target"] for p in prompts]
    want = [o.ids for o in from_ckpt.generate(prompts, max_new_tokens=6)]
    acc2 = _accuracy(from_ckpt, data / "test.jsonl")
    shutil.rmtree(lm)  # the export carries the LM's tokenizer.json and the encoder's weights
    exported = am.AnyModal.load(exp)
    assert [o.ids for o in exported.generate(prompts, max_new_tokens=6)] == want
    print(f"held-out accuracy after stage 1 (captions, exact match): {acc1:.3f}; "
          f"after stage 2 (image QA): {acc2:.3f}")


def test_pretrain_tiny_lm_script_writes_an_importable_lm(tmp_path):
    """scripts/pretrain_tiny_lm.py (the LM the stage recipes start from): it learns its corpus
    (the loss falls) and its folder imports with the same text logits as transformers gives."""
    import subprocess
    import sys

    import transformers

    out = tmp_path / "lm"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain_tiny_lm.py"), "--out", str(out), "--dim", "32",
                        "--layers", "1", "--steps", "60", "--batch-size", "16"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [float(line.split()[-1]) for line in r.stdout.splitlines() if line.startswith("step")]
    assert losses[-1] < 0.6 * losses[0], r.stdout
    model = from_hf(out, [PATCH]).eval()
    batch = model.batch([["Describe the image."]], packed=False)
    ids = batch.ids[0].tolist()  # <bos> text <eos>: anymodal's rows copy the LM's BOS (0) / EOS (1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(torch.tensor([[0] + ids[1:-1] + [1]])).logits[0]
        got = model(batch)[0]
    n = model.vocab.text.vocab_size
    torch.testing.assert_close(got[:, :n], want[:, :n], rtol=1e-4, atol=1e-4)
