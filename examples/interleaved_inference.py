"""Answer interleaved prompts from Python with a trained anymodal model.

    python examples/interleaved_inference.py runs/demo/export runs/demo/data
"""

import json
import sys
from pathlib import Path

import anymodal as am


def main(model_dir: str, data_dir: str) -> None:
    model = am.AnyModal.load(model_dir)
    # one held-out image; ask every question of the suite about it, as one batch
    rec = json.loads(Path(data_dir, "test.jsonl").read_text().splitlines()[0])
    image = am.Image(str(Path(data_dir) / next(s["path"] for s in rec["segments"] if s["type"] == "image")))
    questions = ["What shape is it?", "What colour is the shape?", "How many shapes?", "Where is the shape?"]
    outs = model.generate([[q, image] for q in questions], max_new_tokens=16)
    print(f"image: {image.data}")
    for q, out in zip(questions, outs):
        print(f"  {q:<28} -> {out.text!r}")
    # chat-style input works too
    msgs = [{"role": "user", "content": [{"type": "text", "text": "What shape is it?"},
                                         {"type": "image", "path": image.data}]}]
    print(f"  chat: {model.generate(msgs, max_new_tokens=16).text!r}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
