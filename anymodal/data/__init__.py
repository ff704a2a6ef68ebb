"""Data: manifest reading and the generated data sets (:mod:`anymodal.data.synthetic`).

The manifest format (the one a user writes) is described on the docs page "Data format" and in
:mod:`anymodal.data.manifest`."""

from anymodal.data.manifest import Record, read_manifest
from anymodal.data.synthetic import SynthConfig, synthesize

__all__ = ["Record", "SynthConfig", "read_manifest", "synthesize"]
