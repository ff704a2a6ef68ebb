"""A short run of scripts/fuzz_media.py (the full run, >= 10,000 cases, is reported in
docs/reliability.md): mutated PNG/JPEG, MP4, WAV/FLAC and JSONL bytes decode or raise
MediaError / ManifestError, never another exception, never a crash."""

import random
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import fuzz_media

pytest.importorskip("av")
pytest.importorskip("soundfile")


def test_short_fuzz_run_only_clean_errors(tmp_path):
    report = fuzz_media.fuzz(320, seed=1, save_findings=str(tmp_path / "findings"))
    assert report["cases"] == 320
    assert report["findings"] == [], report["findings"][:5]
    for target, r in report["targets"].items():
        assert r["ok"] + r["rejected"] == r["cases"] == 80, (target, r)
        assert r["rejected"] > 0, f"{target}: no mutation was rejected: the mutators do nothing"


def test_mutations_are_deterministic_and_change_the_bytes(tmp_path):
    seeds = fuzz_media.make_seeds(tmp_path)
    for target in fuzz_media.TARGETS:
        a = [fuzz_media.make_case(target, seeds[target], random.Random(f"7/{target}")) for _ in range(30)]
        b = [fuzz_media.make_case(target, seeds[target], random.Random(f"7/{target}")) for _ in range(30)]
        assert a == b
        assert sum(c not in seeds[target] for c in a) >= 25


def test_run_case_reports_an_escaped_exception_as_unexpected():
    # the harness itself must be able to fail: a case whose decoding raises a non-MediaError
    outcome, detail = fuzz_media.run_case("image", None)  # not bytes: load_image raises MediaError
    assert outcome == "rejected"
    outcome, detail = fuzz_media.run_case("manifest", 12345)  # not bytes: the temp-file write raises TypeError
    assert outcome == "unexpected" and detail.startswith("TypeError")
