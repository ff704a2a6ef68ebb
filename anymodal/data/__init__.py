"""Data: the synthetic suite generator and manifest reading."""

from anymodal.data.manifest import Record, read_manifest
from anymodal.data.synth import SynthConfig, synthesize

__all__ = ["Record", "SynthConfig", "read_manifest", "synthesize"]
