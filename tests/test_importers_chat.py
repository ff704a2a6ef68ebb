"""Conversation importers (LLaVA, ShareGPT, HF messages) through the real `anymodal data import`,
and a tiny `anymodal fit` on the imported multi-image, multi-turn manifest."""

import json

import pytest
import yaml
from PIL import Image

from conftest import run_cli
from anymodal.data.importers import import_documents
from anymodal.data.manifest import read_manifest
from anymodal.errors import ManifestError


@pytest.fixture
def llava(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    for name, colour in (("red.png", (255, 0, 0)), ("blue.png", (0, 0, 255))):
        Image.new("RGB", (32, 32), colour).save(img / name)
    recs = [
        # one image, no placeholder: it goes before the first human turn
        {"id": "single", "image": "red.png",
         "conversations": [{"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "red"}]},
        # two images, one placeholder in each of two human turns, three exchanges
        {"id": "multi", "image": ["red.png", "blue.png"],
         "conversations": [{"from": "system", "value": "Answer in one word."},
                           {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"},
                           {"from": "human", "value": "And this one? <image>"}, {"from": "gpt", "value": "blue"},
                           {"from": "human", "value": "Which came first?"}, {"from": "gpt", "value": "red"}]},
        {"id": "gone", "image": "missing.png",
         "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "x"}]},
        {"id": "mismatch", "image": ["red.png"],
         "conversations": [{"from": "human", "value": "<image> and <image>"}, {"from": "gpt", "value": "x"}]},
        {"id": "broken", "image": "red.png"},
    ]
    src = tmp_path / "llava.json"
    src.write_text(json.dumps(recs))  # LLaVA releases a JSON array
    return tmp_path, src


def test_llava_import_places_images_turns_and_targets(llava):
    tmp, src = llava
    r = run_cli("data", "import", "--format", "llava", str(src), str(tmp / "data" / "train.jsonl"),
                "--image-root", str(tmp / "img"))
    assert r.returncode == 0, r.stderr
    assert "5 documents read, 2 written, 3 dropped" in r.stdout
    assert f"image file not found: {tmp / 'img' / 'missing.png'}" in r.stdout
    assert "record 'mismatch': 2 <image> placeholder(s) but 1 image(s)" in r.stdout
    assert "record 'broken': needs a non-empty 'conversations' list" in r.stdout
    lines = [json.loads(ln) for ln in (tmp / "data" / "train.jsonl").read_text().splitlines()]
    assert [rec["id"] for rec in lines] == ["single", "multi"]
    kinds = [(s["type"], s.get("turn") or s.get("text") or s["path"].split("/")[-1], s.get("role", "prompt"))
             for s in lines[1]["segments"]]
    assert kinds == [("turn", "system", "prompt"), ("text", "Answer in one word.", "prompt"),
                     ("turn", "user", "prompt"), ("image", "red.png", "prompt"), ("text", "Colour?", "prompt"),
                     ("turn", "assistant", "prompt"), ("text", "red", "target"),
                     ("turn", "user", "prompt"), ("text", "And this one?", "prompt"), ("image", "blue.png", "prompt"),
                     ("turn", "assistant", "prompt"), ("text", "blue", "target"),
                     ("turn", "user", "prompt"), ("text", "Which came first?", "prompt"),
                     ("turn", "assistant", "prompt"), ("text", "red", "target")]
    first = [s["type"] for s in lines[0]["segments"]]
    assert first == ["turn", "image", "text", "turn", "text"]  # no placeholder: image before the question
    # the manifest reader takes the records back (paths relative to the manifest's folder resolve)
    recs = read_manifest(tmp / "data" / "train.jsonl")
    assert [s.modality for s in recs[1].segments][:4] == ["turn", "text", "turn", "image"]


def test_strict_stops_at_first_bad_record_naming_it(llava):
    tmp, src = llava
    r = run_cli("data", "import", "--format", "llava", str(src), str(tmp / "out.jsonl"),
                "--image-root", str(tmp / "img"), "--strict")
    assert r.returncode != 0
    assert f"{src}:3: record 'gone': image file not found" in r.stderr and "Traceback" not in r.stderr


def test_imported_llava_manifest_trains_with_anymodal_fit(llava):
    tmp, src = llava
    data = tmp / "data"
    r = run_cli("data", "import", "--format", "llava", str(src), str(data / "train.jsonl"),
                "--image-root", str(tmp / "img"))
    assert r.returncode == 0, r.stderr
    (data / "val.jsonl").write_text((data / "train.jsonl").read_text())
    recipe = tmp / "chat.yaml"
    recipe.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "model": {"tokenizers": ["text.bytes", {"name": "image.patch", "patch_size": 16}],
                  "arch": {"dim": 32, "n_layers": 1, "n_heads": 2, "chat_template": "default"}},
        "data": {"root": str(data), "batch_size": 2, "seq_len": 256},
        "trainer": {"max_steps": 2, "logger": False, "limit_val_batches": 1, "default_root_dir": str(tmp / "run")}}))
    r = run_cli("fit", "--config", str(recipe), cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    import anymodal as am

    ckpt = sorted((tmp / "run").rglob("*.ckpt"))
    assert ckpt, "the run wrote no checkpoint"
    model = am.AnyModal.load(ckpt[-1])
    assert model.vocab.token_name(model.vocab.turn_begin["assistant"]) == "<turn:assistant>"


def test_messages_and_sharegpt_formats(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    msgs = [{"messages": [{"role": "user", "content": [{"type": "image", "path": "a.png"},
                                                       {"type": "text", "text": "What is it?"}]},
                          {"role": "assistant", "content": "black"}]},
            {"messages": [{"role": "user", "content": "hi"}]}]  # nothing to learn from: dropped
    src = tmp_path / "m.jsonl"
    src.write_text("\n".join(json.dumps(m) for m in msgs))
    rep = import_documents(src, tmp_path / "out.jsonl", "messages", image_root=tmp_path)
    assert (rep.docs_written, rep.docs_dropped) == (1, 1) and "no assistant message" in rep.reasons[0]
    rec = json.loads((tmp_path / "out.jsonl").read_text())
    assert rec["segments"] == [{"type": "turn", "turn": "user"}, {"type": "image", "path": "a.png"},
                               {"type": "text", "text": "What is it?"}, {"type": "turn", "turn": "assistant"},
                               {"type": "text", "text": "black", "role": "target"}]
    sg = tmp_path / "sg.jsonl"
    sg.write_text(json.dumps({"id": 7, "conversations": [{"from": "human", "value": "2+2?"},
                                                         {"from": "gpt", "value": "4"},
                                                         {"from": "robot", "value": "?"}]}))
    with pytest.raises(ManifestError, match="unknown speaker 'robot'"):
        import_documents(sg, tmp_path / "sg-out.jsonl", "sharegpt", strict=True)
