"""MkDocs hooks of the anymodal site (``hooks:`` in mkdocs.yml).

- **Pictures** (``on_pre_build``): every ``docs/scripts/*.py`` (not ``_*.py``) is loaded and its
  ``main(out_dir)`` draws its figures into ``docs/generated/`` (gitignored) from the real code:
  the architecture with a real token stream, the mask of a real packed batch, the training
  curve of a real CSV log. Nothing under ``docs/generated/`` is committed.
- **Benchmark results** (``on_config`` + ``on_files``): ``benchmarks/RESULTS.md`` and any
  ``benchmarks/results/*.md`` not already inside it (both written by the benchmark scripts)
  become pages under "Benchmarks", read at build time, so the site shows the last results
  without a copy in docs/. Links in them that point into the repository become plain code text.
- **Pages owned elsewhere** (``on_config``): a nav entry in :data:`OPTIONAL_PAGES` whose file is
  not there yet is left out of the nav (with an INFO line), instead of failing the strict build.
- **The recipes table** (``on_page_markdown``): ``<!-- anymodal: recipes-table -->`` becomes a
  table of ``recipes/*.yaml`` with the first sentence of each file's opening comment, so a new
  recipe shows up without a docs edit.
- **Sphinx roles in docstrings** (``on_page_content``): the code's docstrings cite names the
  Sphinx way (``:class:`Foo```); on the API pages the role prefix is dropped, leaving the code
  span (``~pkg.mod.Foo`` shown as ``Foo``, as Sphinx does).
- **Doctest output in docstrings** (``on_config``): a docstring line like ``['a.b', 'c']`` (the
  printed result of a ``>>>`` example) reads as a Markdown reference to mkdocs-autorefs. Such a
  "target" is not a Python identifier, so its warning is turned into an INFO line; a broken
  reference to a real name (``[anymodal.nope][]``) still fails the strict build.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import time
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.anymodal")

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
SCRIPTS = DOCS / "scripts"
GENERATED = DOCS / "generated"
BENCH = ROOT / "benchmarks"
#: nav pages written by other engineers, possibly not there yet
OPTIONAL_PAGES = ("scale-out.md", "reliability.md")
BENCH_SECTION = "Benchmarks"
RECIPES_TABLE = "<!-- anymodal: recipes-table -->"
_ROLE = re.compile(r":(?:class|func|mod|meth|data|attr|exc|obj|py:\w+):(<code>)(~?)([^<]*)(</code>)")
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")
_MISSING_REF = re.compile(r"Could not find cross-reference target '(.*)'")
_IDENTIFIER = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class _NotAnIdentifier(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        m = _MISSING_REF.search(record.getMessage())
        if m and not _IDENTIFIER.match(m.group(1)):
            log.info("not a cross-reference (left as text): %s", m.group(1))
            return False
        return True


def _bench_pages() -> dict[str, tuple[str, Path]]:
    """{docs path: (nav title, source file)} of the benchmark result files present now."""
    pages: dict[str, tuple[str, Path]] = {}
    results = BENCH / "RESULTS.md"
    embedded = results.read_text(encoding="utf-8") if results.is_file() else ""
    if embedded:
        pages["benchmarks/results.md"] = ("All results (RESULTS.md)", results)
    for md in sorted((BENCH / "results").glob("*.md")):
        text = md.read_text(encoding="utf-8").strip()
        if text and text not in embedded:  # report.py already folds fragments into RESULTS.md
            pages[f"benchmarks/{md.stem}.md"] = (md.stem.replace("_", " ").capitalize(), md)
    return pages


def _walk_nav(nav, keep):
    out = []
    for item in nav:
        if isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, list):
                out.append({title: _walk_nav(value, keep)})
            elif keep(value):
                out.append(item)
        elif keep(item):
            out.append(item)
    return out


def on_config(config, **kwargs):
    docs_dir = Path(config["docs_dir"])
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("mkdocs.plugins.mkdocs_autorefs"):
            logging.getLogger(name).addFilter(_NotAnIdentifier())

    def keep(page: str) -> bool:
        if page in OPTIONAL_PAGES and not (docs_dir / page).is_file():
            log.info("docs/%s is not written yet: left out of the nav", page)
            return False
        return True

    nav = _walk_nav(config["nav"] or [], keep)
    extra = [{title: path} for path, (title, _) in _bench_pages().items()]
    for i, item in enumerate(nav):
        if isinstance(item, dict) and BENCH_SECTION in item:
            value = item[BENCH_SECTION]
            nav[i] = {BENCH_SECTION: (value if isinstance(value, list) else [{"Overview": value}]) + extra}
    config["nav"] = nav
    return config


def _load(script: Path):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # the scripts share docs/scripts/_figure.py
    spec = importlib.util.spec_from_file_location(f"anymodal_docs_{script.stem}", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def on_pre_build(config, **kwargs):
    for script in sorted(SCRIPTS.glob("[!_]*.py")):
        t = time.perf_counter()
        made = _load(script).main(GENERATED)
        log.info("%s -> %s (%.1f s)", script.relative_to(ROOT), ", ".join(p.name for p in made),
                 time.perf_counter() - t)


def _unlink(text: str) -> str:
    """Relative links of a file from benchmarks/ would dangle on the site: keep their text."""
    def sub(m):
        target = m.group(2)
        if re.match(r"^(https?:|mailto:|#)", target):
            return m.group(0)
        return f"{m.group(1)} (`benchmarks/{target}`)"
    return _LINK.sub(sub, text)


def on_files(files, config, **kwargs):
    for path, (_, source) in _bench_pages().items():
        note = (f"\n\n---\n*This page is `{source.relative_to(ROOT)}` as the benchmark scripts last wrote it "
                "(`make bench`); the docs build includes it unchanged.*\n")
        files.append(File.generated(config, path, content=_unlink(source.read_text(encoding="utf-8")) + note))
    return files


def _first_sentence(path: Path) -> str:
    """The first sentence of the comment block a recipe opens with."""
    lines = []
    for ln in path.read_text(encoding="utf-8").splitlines():
        if not ln.startswith("#"):
            break
        text = ln.lstrip("#").strip()
        if not text:
            break
        lines.append(text)
    para = " ".join(lines)
    m = re.search(r"(?<=[.!?])\s", para)
    return (para[:m.start()] if m else para) or "(no description)"


def recipes_table() -> str:
    rows = ["| recipe | what it is |", "|---|---|"]
    for p in sorted((ROOT / "recipes").glob("*.yaml")):
        text = _first_sentence(p).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `recipes/{p.name}` | {text} |")
    return "\n".join(rows)


def on_page_markdown(markdown, page, config, files, **kwargs):
    if RECIPES_TABLE in markdown:
        markdown = markdown.replace(RECIPES_TABLE, recipes_table())
    return markdown


def _strip_role(m: re.Match) -> str:
    name = m.group(3).rsplit(".", 1)[-1] if m.group(2) else m.group(3)
    return f"{m.group(1)}{name}{m.group(4)}"


def on_page_content(html, page, config, files, **kwargs):
    if page.file.src_uri.startswith("api/"):
        html = _ROLE.sub(_strip_role, html)
    return html
