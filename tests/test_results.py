"""`make results` (scripts/results.py): the table is produced, a seed reproduces bit for bit, and
no page states a result that a generated table does not hold."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from safetensors.torch import load_file

SCRIPT = ROOT / "scripts" / "results.py"

# a line that states a result (a score, a rate, a chance level) ...
_CLAIM = re.compile(r"held-out|accuracy|exact match|answer|PSNR|chance|score|rate\b", re.I)
# ... and the numbers in it that look like one (0.xx, 0.xxx, 1.00, 1.000)
_NUMBER = re.compile(r"(?<![\w.])(?:0\.\d{2,3}|1\.000?)(?![\d])")


def _tables() -> list[Path]:
    """The generated tables: make results' page and the benchmark scripts' results."""
    return [ROOT / "docs" / "results.md", ROOT / "benchmarks" / "RESULTS.md",
            *sorted((ROOT / "benchmarks" / "results").glob("*.md"))]


def _pages() -> list[Path]:
    """Where results are quoted: the README, the docs pages, the recipes' comments."""
    docs = [p for p in sorted((ROOT / "docs").rglob("*.md"))
            if p.name != "results.md" and "generated" not in p.parts]
    return [ROOT / "README.md", *docs, *sorted((ROOT / "recipes").glob("*.yaml"))]


def _stated(text: str, yaml: bool) -> list[tuple[int, str, str]]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if yaml and not line.lstrip().startswith("#"):
            continue
        if "--8<--" in line or not _CLAIM.search(line):
            continue
        out += [(i, n, line.strip()) for n in _NUMBER.findall(line)]
    return out


def _held(number: str, table_values: list[str]) -> bool:
    """A stated number is held when a table shows it at its precision or finer (0.99 is held by 0.993)."""
    digits = len(number.split(".")[1])
    want = float(number)
    return any(len(v.split(".")[1]) >= digits and round(float(v), digits) == want for v in table_values)


def test_every_stated_result_is_in_a_generated_table():
    values = [n for t in _tables() if t.is_file() for n in _NUMBER.findall(t.read_text(encoding="utf-8"))]
    assert values, "no generated table found: run make results"
    missing = [f"{page.relative_to(ROOT)}:{i}: {n} in: {line[:120]}"
               for page in _pages()
               for i, n, line in _stated(page.read_text(encoding="utf-8"), page.suffix == ".yaml")
               if not _held(n, values)]
    assert not missing, ("these pages state results that no generated table holds (include the table "
                         "with --8<-- \"docs/results.md:<chain>\" or regenerate it: make results):\n"
                         + "\n".join(missing))


def test_the_claims_check_can_fail():
    stated = _stated("# held-out accuracy 0.993 (chance 0.271)\nmodel: {dim: 0.5}", yaml=True)
    assert [n for _, n, _ in stated] == ["0.993", "0.271"]
    assert _held("0.99", ["0.993"]) and not _held("0.993", ["0.99"]) and not _held("0.95", ["0.993"])


def test_published_table_is_a_full_run_with_three_seeds_per_chain():
    """docs/results.md comes from a full run (not a tiny one), each chain in it has 3 seeds, and
    it names the chains it does not hold yet."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from results import CHAINS  # noqa: PLC0415
    finally:
        sys.path.remove(str(SCRIPT.parent))
    data = json.loads((ROOT / "docs" / "results.json").read_text(encoding="utf-8"))
    assert not data["tiny"] and data["chains"] and set(data["chains"]) <= set(CHAINS)
    missing = set(CHAINS) - set(data["chains"])
    page_text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert all(f"`{n}`" in page_text.split("Not measured yet")[-1] for n in missing)
    for name, chain in data["chains"].items():
        assert len(chain["runs"]) >= 3, f"{name}: fewer than 3 seeds"
        page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
        assert f"[start:{name}]" in page


def _tiny_chain(work: Path) -> dict:
    subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--chains", "chat", "--seeds", "0",
                    "--work", str(work)], check=True, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return json.loads((work / "results.json").read_text())


@pytest.mark.slow
def test_tiny_chain_writes_the_table_and_a_seed_reproduces(tmp_path):
    """The CI-size run writes the page and the JSON; the same seed twice gives the same weights
    (bit for bit) and the same scores."""
    a, b = _tiny_chain(tmp_path / "a"), _tiny_chain(tmp_path / "b")
    page = (tmp_path / "a" / "results.md").read_text()
    assert "[start:chat]" in page and "tiny settings" in page and "| **all** |" in page
    run = a["chains"]["chat"]["runs"][0]
    assert run["seed"] == 0 and {"chat.more_circles", "chat.same_colour", "all"} <= set(run["metrics"])
    assert all(0.0 <= m["score"] <= 1.0 for m in run["metrics"].values())
    assert run["metrics"] == b["chains"]["chat"]["runs"][0]["metrics"]
    wa = load_file(tmp_path / "a" / "chat" / "seed0" / "chat" / "export" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "chat" / "seed0" / "chat" / "export" / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_recipe_copies_move_every_run_path_and_set_the_seed(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from results import _rewrite_recipe  # noqa: PLC0415
    finally:
        sys.path.remove(str(SCRIPT.parent))
    text = (ROOT / "recipes" / "any-to-any.yaml").read_text()
    out = _rewrite_recipe(text, tmp_path / "w", 7)
    assert "seed_everything: 7" in out and "seed_everything: 0" not in out
    kept = [line for line in out.splitlines() if re.search(r"(?<![\w./-])runs/", line)]
    assert not kept, kept
    assert f"{(tmp_path / 'w').as_posix()}/image-fsq/checkpoints/last.ckpt" in out
