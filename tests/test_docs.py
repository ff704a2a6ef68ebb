"""Every ```python block of the documentation runs, so the docs stay true to the code.

The blocks of each page (``docs/**/*.md`` and ``README.md``) run in order in one fresh
namespace, in a fresh temporary directory that is the current directory while they run (so
relative paths like ``runs/demo/export`` resolve there), with one torch thread. Registries the
blocks may add to (tokenizers, evaluation tasks and checks) are restored after each page.
A ``--8<-- "path"`` line inside a block is replaced by that repository file, as the site's
snippets extension does.

Directives are HTML comments, invisible on the site::

    <!-- docs-test: setup=demo -->        anywhere on a page: prepare the temporary directory before
                                          the page's first block (several: setup=demo,depth_plugin)
    <!-- docs-test: requires=encodec -->  the blocks after this line need that module; without it
                                          each is reported as a skipped test with the reason
    <!-- docs-test: skip=REASON -->       the next block is not run (a skipped test names the reason)
    <!-- docs-test: expect-output -->     the next fenced block must equal what the python block
                                          before it printed

Setups (:data:`SETUPS`): ``demo`` puts what ``make demo`` leaves, untrained, in place:
``runs/demo/export`` (recipes/demo.yaml's tokenizers and decoder shape, random weights) and
``runs/demo/data`` (a small synthetic suite of the recipe's tasks: real PNG, MP4, WAV files and
manifests). ``any_to_any``:
``runs/any-to-any/export``, ``text.bytes`` + ``image.fsq`` + ``audio.encodec`` (random init:
the codecs decode, the output means nothing). ``depth_plugin``: ``pip install
tokenizers/anymodal-depth`` into a temporary folder put on ``sys.path``, as an installed package
is. ``recipes``: a copy of ``recipes/`` in the directory. README.md carries no directives (it is the
repository's front page): :data:`PAGE_SETUPS` gives it ``demo``. A setup whose modules are
missing (:data:`SETUP_REQUIRES`) is not made; the blocks that use it carry the same
``requires`` directive and are reported as skipped.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import ROOT

DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(ROOT).as_posix() for p in DOCS.rglob("*.md")) + ["README.md"]
PAGE_SETUPS = {"README.md": ["demo"]}
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
SNIPPET = re.compile(r"""^\s*-{1,}8<-{1,}\s+["']([^"']+)["']\s*$""")


# ---- parsing -------------------------------------------------------------------------------------
@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    skip: str | None = None  # reason
    requires: list[str] = field(default_factory=list)
    expect_output: bool = False


@dataclass
class Page:
    path: str
    blocks: list[Block]
    setups: list[str]


def _expand_snippets(code: str) -> str:
    out = []
    for ln in code.splitlines():
        m = SNIPPET.match(ln)
        out.append((ROOT / m.group(1)).read_text(encoding="utf-8").rstrip("\n") if m else ln)
    return "\n".join(out) + "\n"


def parse_page(path: str) -> Page:
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    setups = list(PAGE_SETUPS.get(path, []))
    requires: list[str] = []
    pending_skip, pending_expect = None, False
    i = 0
    while i < len(lines):
        for d in DIRECTIVE.findall(lines[i]):
            key, _, value = d.partition("=")
            key = key.strip()
            if key == "setup":
                setups += [s.strip() for s in value.split(",") if s.strip()]
            elif key == "requires":
                requires = requires + [s.strip() for s in value.split(",") if s.strip()]
            elif key == "skip":
                if not value.strip():
                    raise ValueError(f"{path}:{i + 1}: docs-test skip needs a reason (skip=REASON)")
                pending_skip = value.strip()
            elif key == "expect-output":
                pending_expect = True
            else:
                raise ValueError(f"{path}:{i + 1}: unknown docs-test directive {d!r}")
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group("indent"), m.group("fence"), m.group("lang").lower()
        start, body = i, []
        i += 1
        while i < len(lines) and not (lines[i].startswith(indent + fence[0] * len(fence))
                                      and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        if i >= len(lines):
            raise ValueError(f"{path}:{start + 1}: unclosed code fence")
        i += 1
        code = "\n".join(body) + "\n"
        if lang in ("python", "py"):
            blocks.append(Block("python", _expand_snippets(code), start + 1, pending_skip, list(requires)))
            pending_skip = None
        elif pending_expect:
            blocks.append(Block(lang, code, start + 1, expect_output=True))
        elif pending_skip:
            raise ValueError(f"{path}:{start + 1}: docs-test skip before a {lang or 'plain'} block (not python)")
        pending_expect = False
    return Page(path, blocks, setups)


# ---- setups --------------------------------------------------------------------------------------
def _recipe(name: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "recipes" / name).read_text())


@pytest.fixture(scope="session")
def setup_cache(tmp_path_factory):
    """Each setup is made once per test session, then copied into each page's directory."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            if name not in SETUPS:
                raise KeyError(f"unknown docs-test setup {name!r}; known: {sorted(SETUPS)}")
            d = tmp_path_factory.mktemp(f"docs-setup-{name}")
            SETUPS[name](d)
            made[name] = d
        return made[name]

    return get


def _setup_demo(d: Path) -> None:
    import anymodal as am
    from anymodal.data import SynthConfig, synthesize
    from anymodal.model import ModelConfig

    recipe = _recipe("demo.yaml")
    synth = {**recipe["data"].get("synthetic", {}), "train_per_task": 4, "val_per_task": 2, "test_per_task": 4,
             "train_weights": {}}  # the recipe's tasks and media sizes, few samples
    synthesize(d / "runs/demo/data", SynthConfig(**synth))
    torch.manual_seed(0)
    am.AnyModal(recipe["model"]["tokenizers"], ModelConfig(**recipe["model"]["arch"])).export(d / "runs/demo/export")


def _setup_any_to_any(d: Path) -> None:
    import anymodal as am
    from anymodal.model import ModelConfig

    # recipes/any-to-any.yaml's tokenizers, with the FSQ autoencoder at random init (asked for: no checkpoint)
    recipe = _recipe("any-to-any.yaml")
    specs = [s if isinstance(s, str) or "checkpoint" not in s else
             {**{k: v for k, v in s.items() if k != "checkpoint"}, "random_init": True}
             for s in recipe["model"]["tokenizers"]]
    torch.manual_seed(0)
    am.AnyModal(specs, ModelConfig(**recipe["model"]["arch"])).export(d / "runs/any-to-any/export")


def _setup_depth_plugin(d: Path) -> None:
    # built from a copy: setuptools writes build/ next to the sources, and tests/test_plugin.py
    # may be building the same package in another worker at this moment
    src = shutil.copytree(ROOT / "tokenizers" / "anymodal-depth", d / "src",
                          ignore=shutil.ignore_patterns("build", "*.egg-info"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(d / "site"), str(src)],
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def _setup_recipes(d: Path) -> None:
    shutil.copytree(ROOT / "recipes", d / "recipes")


SETUPS = {"demo": _setup_demo, "any_to_any": _setup_any_to_any, "depth_plugin": _setup_depth_plugin,
          "recipes": _setup_recipes}
#: a setup whose modules are missing is not made; the blocks using it carry the same ``requires``
SETUP_REQUIRES = {"any_to_any": ["encodec"]}


# ---- isolation -----------------------------------------------------------------------------------
_REGISTRY_MODULES = ("anymodal.tokenizers.registry", "anymodal.evaluate.tasks", "anymodal.evaluate.checks")


@contextlib.contextmanager
def isolated(cwd: Path, extra_path: list[str]):
    """cwd, sys.path, the registries and torch's thread count as they were, afterwards."""
    from anymodal import list_tokenizers
    from anymodal.evaluate import list_checks, list_tasks
    from anymodal.tokenizers import registry

    # built-ins register when their modules are first imported: load them all before the
    # snapshot, or restoring it would forget registrations whose modules stay imported
    list_tokenizers(), list_tasks(), list_checks()
    saved = []
    for name in _REGISTRY_MODULES:
        mod = importlib.import_module(name)
        for k, v in list(vars(mod).items()):
            if k.startswith("_") and not k.startswith("__") and isinstance(v, (dict, set, list, bool)):
                saved.append((mod, k, v, v.copy() if hasattr(v, "copy") else v))
    old_cwd, old_path, old_modules = os.getcwd(), list(sys.path), set(sys.modules)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sys.path[:0] = extra_path
    importlib.invalidate_caches()
    if extra_path:  # a plugin put on the path: let the registry scan the entry points again
        registry._loaded = False
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path
        for m in set(sys.modules) - old_modules:  # a page's plugin modules must not leak into the next page
            file = getattr(sys.modules[m], "__file__", None) or ""
            if any(file.startswith(p) for p in extra_path):
                del sys.modules[m]
        for mod, k, orig, copy in saved:
            if isinstance(orig, bool):
                setattr(mod, k, copy)
                continue
            orig.clear()
            if isinstance(orig, list):
                orig.extend(copy)
            else:
                orig.update(copy)
            setattr(mod, k, orig)
        torch.set_num_threads(old_threads)


# ---- the tests -----------------------------------------------------------------------------------
def _python_blocks(page: Page) -> list[Block]:
    return [b for b in page.blocks if b.lang == "python"]


def _missing(mods: list[str]) -> list[str]:
    return [m for m in mods if importlib.util.find_spec(m) is None]


def _skip_reason(b: Block) -> str | None:
    if b.skip:
        return b.skip
    missing = _missing(b.requires)
    return f"needs {', '.join(missing)} (not installed)" if missing else None


def _skipped_blocks():
    for path in PAGES:
        for b in _python_blocks(parse_page(path)):
            reason = _skip_reason(b)
            if reason:
                yield pytest.param(path, b.line, reason, id=f"{path}:{b.line}")


def test_pages_are_found():
    assert "README.md" in PAGES and "docs/index.md" in PAGES, PAGES
    assert sum(len(_python_blocks(parse_page(p))) for p in PAGES) >= 10


def run_page(page: Page, setup_cache, tmp_path: Path) -> int:
    """Run the page's python blocks in order in one namespace; returns how many ran."""
    extra_path = []
    for name in page.setups:
        if _missing(SETUP_REQUIRES.get(name, [])):
            continue
        src = setup_cache(name)
        if name == "depth_plugin":
            extra_path.append(str(src / "site"))
        else:
            shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    namespace = {"__name__": "__docs__"}
    printed = None
    ran = 0
    with isolated(tmp_path, extra_path):
        for b in page.blocks:
            if b.expect_output:
                if printed is None:
                    continue  # the block it checks did not run here
                want = [ln.rstrip() for ln in b.code.strip("\n").splitlines()]
                got = [ln.rstrip() for ln in printed.strip("\n").splitlines()]
                assert got == want, (f"{page.path}:{b.line}: the block above printed\n{printed}\n"
                                     f"but the page shows\n{b.code}")
                continue
            printed = None
            if _skip_reason(b):
                continue
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    exec(compile(b.code, f"{page.path}:{b.line}", "exec"), namespace)  # noqa: S102 - the point
            except Exception as e:
                raise AssertionError(f"{page.path}: the python block at line {b.line} failed: "
                                     f"{type(e).__name__}: {e}\n--- block ---\n{b.code}--- printed ---\n"
                                     f"{out.getvalue()}") from e
            printed = out.getvalue()
            ran += 1
    return ran


@pytest.mark.parametrize("path", [p for p in PAGES if _python_blocks(parse_page(p))])
def test_page_code_runs(path, setup_cache, tmp_path):
    page = parse_page(path)
    ran = run_page(page, setup_cache, tmp_path)
    assert ran == sum(1 for b in _python_blocks(page) if not _skip_reason(b))


_SKIPPED = list(_skipped_blocks())
if _SKIPPED:  # (an empty parameter list would show as one confusing skip)
    @pytest.mark.parametrize("path,line,reason", _SKIPPED)
    def test_skipped_block(path, line, reason):
        """One visible skip per block that does not run here, with its reason."""
        pytest.skip(f"{path}:{line}: {reason}")


def test_directives_and_snippets_are_checked(tmp_path, monkeypatch):
    """The parser rejects what it cannot honour (so a typo never silently skips a block)."""
    page = tmp_path / "p.md"
    page.write_text("<!-- docs-test: skipp=typo -->\n```python\nx = 1\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(ValueError, match="unknown docs-test directive"):
        parse_page("p.md")
    page.write_text("<!-- docs-test: skip= -->\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        parse_page("p.md")
    (tmp_path / "f.py").write_text("y = 2\n")
    page.write_text('  ```python\n  --8<-- "f.py"\n  print(y)\n  ```\n<!-- docs-test: expect-output -->\n'
                    "```text\n2\n```\n```bash\nls\n```\n")
    blocks = parse_page("p.md").blocks
    assert [(b.lang, b.code, b.expect_output) for b in blocks] == [("python", "y = 2\nprint(y)\n", False),
                                                                   ("text", "2\n", True)]


def test_skips_requires_and_expected_output(tmp_path, monkeypatch, setup_cache):
    """Skipped and unmet-requirement blocks do not run; a wrong expected output fails the page."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "p.md"
    page.write_text("```python\nprint(6 * 7)\n```\n<!-- docs-test: expect-output -->\n```text\n42\n```\n"
                    "<!-- docs-test: skip=needs a GPU -->\n```python\nraise RuntimeError('ran')\n```\n"
                    "<!-- docs-test: requires=no_such_module_for_docs_tests -->\n"
                    "```python\nraise RuntimeError('ran')\n```\n")
    parsed = parse_page("p.md")
    assert [_skip_reason(b) for b in _python_blocks(parsed)] == [
        None, "needs a GPU", "needs no_such_module_for_docs_tests (not installed)"]
    assert run_page(parsed, setup_cache, tmp_path) == 1
    page.write_text("```python\nprint(6 * 7)\n```\n<!-- docs-test: expect-output -->\n```text\n41\n```\n")
    with pytest.raises(AssertionError, match="printed"):
        run_page(parse_page("p.md"), setup_cache, tmp_path)
