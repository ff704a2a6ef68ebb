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
