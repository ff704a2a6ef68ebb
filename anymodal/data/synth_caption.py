"""Moved: the synthetic captions live in :mod:`anymodal.data.synthetic.captions`. This module keeps
the import path that scripts and tests use."""

from anymodal.data.synthetic.captions import (CAPTION_KINDS, FOLDER, FORMAT_VERSION, NUMBER_WORDS, CaptionConfig,
                                              caption_samples, count_caption, scene_caption, synthesize_captions)
from anymodal.data.synthetic.captions import DESCRIBE as PROMPT

__all__ = ["CAPTION_KINDS", "FOLDER", "FORMAT_VERSION", "NUMBER_WORDS", "PROMPT", "CaptionConfig", "caption_samples",
           "count_caption", "scene_caption", "synthesize_captions"]
