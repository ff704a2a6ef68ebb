"""Multi-turn synthetic tasks: the last question can only be answered from earlier turns.

Each sample is a three-turn conversation. Turns 1 and 2 each show one image and ask about it;
turn 3 shows nothing and asks a follow-up that compares the two::

    user: How many circles? <image 1>         assistant: 2
    user: How many circles? <image 2>         assistant: 3
    user: Which one had more circles?         assistant: second

- ``chat.more_circles``: "How many circles?" twice, then "Which one had more circles?"
  -> first | second (the two counts differ, 1-4 each);
- ``chat.same_colour``: "What colour is the shape?" twice, then "Were they the same colour?"
  -> yes | no (one shape per image, in a cell of the 3x3 grid).

The last turn holds no media and the same words in every sample of a task, and the answers are
balanced, so the last turn alone is at chance: the answer lies in the earlier turns (their
images, and the replies to them). Training puts the loss on every assistant turn (the counts and
colours too); a task's held-out score (:mod:`anymodal.evaluate.suite`) is the last reply, asked
with the earlier turns and their reference replies as the history
(:meth:`anymodal.data.manifest.Record.prompt`).

The records are written by :func:`anymodal.data.synthetic.qa.synthesize` (``SynthConfig(tasks=
["chat"])``; group ``chat``, not in ``all``, so suites written before keep their content), with
``{"type": "turn", "turn": "user"}`` segments a model with a chat template
(``model.arch.chat_template``) turns into its role tokens. ``recipes/chat.yaml`` trains them.

    from anymodal.data.synthetic import SynthConfig, synthesize
    paths = synthesize("runs/chat/data", SynthConfig(tasks=["chat"], train_per_task=2000))
"""

from __future__ import annotations

import random

from anymodal.data.synthetic.draw import COLOURS, SHAPES, draw_grid, draw_shape, grey_canvas

CHAT_TASKS = ("chat.more_circles", "chat.same_colour")
ORDINALS = ("first", "second")
YES_NO = ("yes", "no")
HOW_MANY_CIRCLES = "How many circles?"
WHAT_COLOUR = "What colour is the shape?"

#: one turn of a conversation: (question, [(modality, media), ...], reply)
DialogueTurn = tuple[str, list, str]


def _shape_in_a_cell(rng: random.Random, size: int, colour: str):
    """One shape of ``colour`` in a random cell of the 3x3 grid (a whole 16 px patch at 48 px)."""
    img, d = grey_canvas(size, rng)
    cell = size / 3
    c = rng.randrange(9)
    r = min(cell * rng.uniform(0.33, 0.42), (cell - 3) / 2)
    draw_shape(d, rng.choice(SHAPES), (c % 3 + 0.5) * cell, (c // 3 + 0.5) * cell, r, COLOURS[colour])
    return img


def chat_more_circles(rng: random.Random, cfg, answer: str) -> list[DialogueTurn]:
    """Two images with different numbers of circles (1-4 each), counted one per turn; then which had more."""
    a, b = rng.sample(range(1, 5), 2)
    more, fewer = max(a, b), min(a, b)
    counts = (more, fewer) if answer == "first" else (fewer, more)
    return [(HOW_MANY_CIRCLES, [("image", draw_grid(rng, cfg.image_size, n, "circle"))], str(n)) for n in counts] + [
        ("Which one had more circles?", [], answer)]


def chat_same_colour(rng: random.Random, cfg, answer: str) -> list[DialogueTurn]:
    """Two one-shape images, their colours named one per turn; then whether the colours were the same.
    The first colour is uniform; the second equals it for "yes", else is uniform over the other three."""
    first = rng.choice(list(COLOURS))
    second = first if answer == "yes" else rng.choice([c for c in COLOURS if c != first])
    return [(WHAT_COLOUR, [("image", _shape_in_a_cell(rng, cfg.image_size, c))], c) for c in (first, second)] + [
        ("Were they the same colour?", [], answer)]


#: name -> (the last question, its choices, the generator of the turns)
CHAT_TASK_SPECS = {
    "chat.more_circles": ("Which one had more circles?", ORDINALS, chat_more_circles),
    "chat.same_colour": ("Were they the same colour?", YES_NO, chat_same_colour),
}
assert tuple(CHAT_TASK_SPECS) == CHAT_TASKS
