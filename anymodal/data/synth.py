"""Moved: the synthetic QA suite lives in :mod:`anymodal.data.synthetic.qa` (and the package
:mod:`anymodal.data.synthetic`). This module keeps the import path that scripts, tests and docs
use (``from anymodal.data.synth import SynthConfig, synthesize``)."""

from anymodal.data.synthetic.draw import COLOURS, POSITIONS, SHAPES
from anymodal.data.synthetic.qa import (AUDIO_TASKS, CROSS_TASKS, EXTRA_TASKS, FORMAT_VERSION, IMAGE_TASKS,
                                        TASK_GROUPS, TASKS, VIDEO_TASKS, SynthConfig, SynthTask, synthesize)
from anymodal.data.synthetic.writing import SPLIT_SEEDS, write_audio, write_video

__all__ = ["AUDIO_TASKS", "COLOURS", "CROSS_TASKS", "EXTRA_TASKS", "FORMAT_VERSION", "IMAGE_TASKS", "POSITIONS",
           "SHAPES", "SPLIT_SEEDS", "TASKS", "TASK_GROUPS", "VIDEO_TASKS", "SynthConfig", "SynthTask", "synthesize",
           "write_audio", "write_video"]
