"""Every generated data set of anymodal, in one package: real media files plus JSONL manifests.

No data set can be downloaded where anymodal is tested, so the data are generated, as real PNG,
MP4 and WAV files that go through the same decoders a user's data go through:

- :mod:`~anymodal.data.synthetic.qa`: the interleaved question-answering suite
  (:func:`synthesize`; ``anymodal data synth``; the demo trains on it);
- :mod:`~anymodal.data.synthetic.captions`: image captions for stage-1 alignment
  (:func:`synthesize_captions`);
- :mod:`~anymodal.data.synthetic.generation`: text -> image, text -> audio and image -> audio
  targets, and text -> video, image -> video and video -> audio (:func:`synthesize_gen`), scored
  by :mod:`anymodal.evaluate.checks`;
- :mod:`~anymodal.data.synthetic.probe`: the POPE-style hallucination probe (:func:`write_probe`);
- :mod:`~anymodal.data.synthetic.dialogue`: three-turn conversations whose last question needs the
  earlier turns (the ``chat`` group of the QA suite; ``recipes/chat.yaml`` trains them).

They share the drawing helpers (:mod:`~anymodal.data.synthetic.draw`), the sound helpers
(:mod:`~anymodal.data.synthetic.sound`) and one writer, :func:`write_suite` (each split's media,
an atomic JSONL manifest per split, a stamp file of the config that makes a second call free).
Each split has its own seed (:data:`SPLIT_SEEDS`), so the held-out media are never seen in training.

    from anymodal.data.synthetic import SynthConfig, synthesize
    paths = synthesize("runs/demo/data", SynthConfig(train_per_task=100))
    paths["test"]  # runs/demo/data/test.jsonl
"""

from anymodal.data.synthetic.captions import (DESCRIBE, CaptionConfig, count_caption, scene_caption,
                                              synthesize_captions)
from anymodal.data.synthetic.draw import (COLOURS, DIRECTIONS, POSITIONS, SHAPES, draw_flashes, draw_gen_target,
                                          draw_grid, draw_in_quadrant, draw_moving_shape, draw_objects, draw_shape,
                                          draw_squares, grey_canvas)
from anymodal.data.synthetic.generation import (DEFAULT_GEN_TASKS, GEN_TASKS, VIDEO_GEN_TASKS, GenConfig, beep_prompt,
                                                motion_prompt, synthesize_gen)
from anymodal.data.synthetic.probe import OBJECTS, SETTINGS, ProbeConfig, write_probe
from anymodal.data.synthetic.qa import TASK_GROUPS, TASKS, SynthConfig, SynthTask, synthesize
from anymodal.data.synthetic.sound import PITCH_PATTERNS, beep_wave, random_beeps
from anymodal.data.synthetic.writing import SPLIT_SEEDS, write_audio, write_jsonl, write_suite, write_video

__all__ = [
    "COLOURS", "DEFAULT_GEN_TASKS", "DESCRIBE", "DIRECTIONS", "GEN_TASKS", "VIDEO_GEN_TASKS", "draw_flashes",
    "draw_moving_shape", "motion_prompt", "OBJECTS", "PITCH_PATTERNS", "POSITIONS", "SETTINGS", "SHAPES", "SPLIT_SEEDS",
    "TASKS", "TASK_GROUPS", "CaptionConfig", "GenConfig", "ProbeConfig", "SynthConfig", "SynthTask", "beep_prompt",
    "beep_wave", "count_caption", "draw_gen_target", "draw_grid", "draw_in_quadrant", "draw_objects", "draw_shape",
    "draw_squares", "grey_canvas", "random_beeps", "scene_caption", "synthesize", "synthesize_captions",
    "synthesize_gen", "write_audio", "write_jsonl", "write_probe", "write_suite", "write_video",
]
