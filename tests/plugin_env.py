"""Installed tokenizer plugins for tests, without pip: a ``NAME-VERSION.dist-info`` folder (the
metadata and ``entry_points.txt`` pip writes) in a site folder, read by the real
``importlib.metadata`` discovery that the registry uses. ``tests/test_plugin.py`` also installs
the example plugin with pip, once, for the end-to-end path.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import sys
from pathlib import Path

from conftest import ROOT

DEPTH_PACKAGE = ROOT / "tokenizers" / "anymodal-depth" / "anymodal_depth"
DEPTH_ENTRY = {"depth.patch": "anymodal_depth:DepthPatchTokenizer"}


def write_distribution(site: Path, name: str, version: str, entry_points: dict[str, str]) -> Path:
    """Install into ``site`` the example plugin's package (``anymodal_depth``) under the
    distribution ``name`` ``version``, declaring ``entry_points`` in the ``anymodal.tokenizers``
    group; returns ``site``. (The source folder itself is not put on the path: a pip build
    leaves an ``.egg-info`` there, which would be one more installed distribution.)"""
    site.mkdir(parents=True, exist_ok=True)
    if not (site / DEPTH_PACKAGE.name).exists():
        shutil.copytree(DEPTH_PACKAGE, site / DEPTH_PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[anymodal.tokenizers]\n{lines}")
    return site


@contextlib.contextmanager
def installed(*paths: Path):
    """Put ``paths`` on ``sys.path`` and let the registry discover entry points afresh; on exit
    the registry, ``sys.path`` and the imported plugin modules are as before."""
    from anymodal.tokenizers import registry

    list(registry.list_tokenizers())  # built-ins in place before the snapshot
    saved = (dict(registry._REGISTRY), dict(registry._PROVIDERS), {k: list(v) for k, v in registry._CLASHES.items()})
    modules = set(sys.modules)
    sys.path[:0] = [str(p) for p in paths]
    importlib.invalidate_caches()
    registry._loaded = False
    try:
        yield registry
    finally:
        del sys.path[:len(paths)]
        for m in set(sys.modules) - modules:
            if m.split(".")[0] == "anymodal_depth":
                del sys.modules[m]
        for table, old in zip((registry._REGISTRY, registry._PROVIDERS, registry._CLASHES), saved):
            table.clear()
            table.update(old)
        registry._loaded = True
