"""The decoder: one transformer reading the interleaved stream from layer 0."""

from anymodal.model.config import PRESETS, ModelConfig, debug, preset, small, tiny
from anymodal.model.transformer import AnyModalTransformer, KVCache, lm_loss

__all__ = ["PRESETS", "AnyModalTransformer", "KVCache", "ModelConfig", "debug", "lm_loss", "preset", "small",
           "tiny"]
