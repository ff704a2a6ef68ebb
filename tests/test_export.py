"""Export / load without pickle; pickle payloads are refused."""

import pickle

import pytest
import torch

import anymodal as am
from anymodal.model import debug


def test_export_roundtrip_same_outputs(tmp_path):
    torch.manual_seed(0)
    m = am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8}], debug()).eval()
    prompt = ["Hi", am.Image(torch.rand(3, 16, 24))]
    ref = m.generate(prompt, max_new_tokens=8, stop_at_eos=False)
    m.export(tmp_path / "exp")
    assert {p.name for p in (tmp_path / "exp").iterdir()} == {"config.json", "model.safetensors"}
    m2 = am.AnyModal.load(tmp_path / "exp")
    assert m2.generate(prompt, max_new_tokens=8, stop_at_eos=False).ids == ref.ids


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_payload_checkpoint_refused(tmp_path):
    p = tmp_path / "evil.ckpt"
    with open(p, "wb") as f:
        pickle.dump({"state_dict": {}, "anymodal": Evil()}, f)
    with pytest.raises(ValueError, match="refused"):
        am.AnyModal.load(p)


def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        am.AnyModal.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        am.AnyModal.load(tmp_path)


def _tiny_hf_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["what shape is it", "a red circle", "hi there"], trainers.WordLevelTrainer(
        special_tokens=["[UNK]"]))
    tok.save(str(path))
    return path


def test_export_writes_vocabulary_and_tokenizer_files(tmp_path):
    pytest.importorskip("tokenizers")
    import json

    tj = _tiny_hf_tokenizer(tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    m = am.AnyModal([{"name": "text.hf", "path": str(tj)}, {"name": "image.fsq", "random_init": True}], debug()).eval()
    prompt = ["what shape", am.Image(torch.rand(3, 32, 32))]
    ref = m.generate(prompt, max_new_tokens=6, stop_at_eos=False)
    exp = m.export(tmp_path / "exp")
    files = {str(p.relative_to(exp)) for p in exp.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "tokenizers/text.hf/tokenizer.json"} <= files
    assert any(f.startswith("tokenizers/image.fsq/") for f in files), files
    meta = json.loads((exp / "config.json").read_text())
    assert meta["vocabulary"] == json.loads(json.dumps(m.vocab.to_dict()))  # offsets, specials, size
    assert meta["tokenizers"][0]["path"] == "tokenizers/text.hf"  # relative: the folder can move
    tj.unlink()  # the export must not need the original tokenizer file
    m2 = am.AnyModal.load(exp)
    assert m2.generate(prompt, max_new_tokens=6, stop_at_eos=False).ids == ref.ids


class _Touch:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_checkpoint_refused_by_load_and_by_resume(tmp_path):
    """torch.save'd (zip format) payloads: AnyModal.load and `anymodal fit --ckpt_path` refuse
    them without running them."""
    import sys

    import yaml

    from anymodal.train.checkpoint_io import UnsafeCheckpointError
    from anymodal.train.cli import run

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "anymodal": {"x": _Touch(marker)}}, evil)
    with pytest.raises(ValueError, match="refused"):
        am.AnyModal.load(evil)
    recipe = tmp_path / "r.yaml"
    (tmp_path / "t.jsonl").write_text('{"segments": [{"type": "text", "text": "hello"}]}\n')
    recipe.write_text(yaml.safe_dump({
        "model": {"tokenizers": ["text.bytes"], "arch": {"dim": 32, "n_layers": 1, "n_heads": 2}},
        "data": {"root": str(tmp_path), "train": "t.jsonl", "val": None, "batch_size": 1, "seq_len": 32},
        "trainer": {"max_steps": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "run")}}))
    sys.argv = sys.argv[:1]
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        run(["fit", "--config", str(recipe), "--ckpt_path", str(evil)])
    assert not marker.exists()
