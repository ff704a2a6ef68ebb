"""Answer interleaved prompts (text mixed with images, a video, a sound) from Python.

    python examples/interleaved_inference.py runs/demo/export runs/demo/data

Takes held-out media from the synthetic suite the demo trained on and asks one batch of
questions about them; a prompt mixes plain strings with ``am.Image``, ``am.Video`` and
``am.Audio`` segments in any order.
"""

import json
import sys
from pathlib import Path

import anymodal as am

KINDS = {"image": am.Image, "video": am.Video, "audio": am.Audio}


def held_out_media(data_dir: Path) -> dict[str, list]:
    """task -> the media segments of its first held-out record."""
    media = {}
    for line in (data_dir / "test.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["task"] not in media:
            media[rec["task"]] = [KINDS[s["type"]](str(data_dir / s["path"]))
                                  for s in rec["segments"] if s["type"] in KINDS]
    return media


def main(model_dir: str, data_dir: str) -> None:
    model = am.AnyModal.load(model_dir)
    media = held_out_media(Path(data_dir))
    prompts = []
    if "image.shape" in media:
        image = media["image.shape"][0]
        prompts += [["What shape is it?", image], ["What colour is the shape?", image], ["Where is the shape?", image]]
    if "video.motion" in media:
        prompts.append(["Which way does the square move?", media["video.motion"][0]])
    if "audio.pitch" in media:
        prompts.append(["Is the pitch rising or falling?", media["audio.pitch"][0]])
    if "cross.beeps_squares" in media:  # an image and a sound in one prompt
        prompts.append(["Are there more beeps or more squares?", *media["cross.beeps_squares"]])
    outs = model.generate(prompts, max_new_tokens=16)  # one batch, greedy
    for prompt, out in zip(prompts, outs):
        question, files = prompt[0], ", ".join(Path(s.data).name for s in prompt[1:])
        print(f"  {question:<40} [{files}] -> {out.text!r}")
    # chat-style messages work too
    if "image.shape" in media:
        msgs = [{"role": "user", "content": [{"type": "text", "text": "What shape is it?"},
                                             {"type": "image", "path": media["image.shape"][0].data}]}]
        print(f"  chat: {model.generate(msgs, max_new_tokens=16).text!r}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
