import os
import sys
from pathlib import Path

import pytest
import torch

# one thread per test process: `make test` runs two xdist workers on the 2 cores
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic suite on disk (real PNG files + manifests), shared by the session."""
    from anymodal.data import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(root, SynthConfig(train_per_task=40, val_per_task=5, test_per_task=10, image_size=32))
    return root


@pytest.fixture
def png(tmp_path):
    from PIL import Image

    p = tmp_path / "red.png"
    Image.new("RGB", (40, 24), (255, 0, 0)).save(p)
    return p


def run_cli(*args, cwd=None, timeout=600, env=None):
    """Run the real `anymodal` console script in a subprocess (``env`` adds variables)."""
    import subprocess

    exe = Path(sys.executable).parent / "anymodal"
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


def wire_to_open_spans(model, *tokenizer_names):
    """Set ``model``'s weights by hand (in place) so that, in text mode, it opens a media span of one
    of ``tokenizer_names`` instead of writing text (inside a span, generation constrains the codes to
    that tokenizer's range): the embedding's first channel is large and positive, the final norm
    keeps only it, and the head scores only those begin markers. Returns the model."""
    v = model.vocab
    with torch.no_grad():
        model.model.embed.weight[:, 0] = 50.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.model.head.weight.zero_()
        for name in tokenizer_names:
            model.model.head.weight[v.begin[name], 0] = 5.0
    return model
