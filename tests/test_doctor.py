"""`anymodal doctor` (what works here, why not, how to get it) and the CLI's error rule: one line
for a bad input, the full traceback for a programming error, always with --debug."""

import subprocess
import sys

import pytest
import yaml

from anymodal.cli import _guard, main
from anymodal.doctor import doctor_main, format_report, run_checks
from conftest import run_cli


def test_doctor_through_the_cli_names_a_disabled_backend_and_how_to_get_it():
    r = run_cli("doctor", "--device", "cpu", env={"ANYMODAL_VIDEO_BACKENDS": "pyav"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for section in ("core", "video", "audio", "optional", "attention", "gpu"):
        assert section in lines, r.stdout
    assert any(ln.startswith("  ok  torch ") for ln in lines)
    assert any(ln.startswith("  ok  pyav ") and "auto picks it first" in ln for ln in lines), r.stdout
    i = lines.index("  --  decord: disabled by ANYMODAL_VIDEO_BACKENDS=pyav")
    assert lines[i + 1] == "      get it: pip install 'anymodal[video]' (decord bundles its own FFmpeg)"
    assert any(ln.startswith("  ok  varlen on cpu training and inference") for ln in lines)
    assert any(ln.startswith("  ok  flex on cpu inference only: ") for ln in lines)
    assert lines[-1].startswith("core: ok;")


def test_doctor_reports_a_missing_optional_and_a_missing_core_part(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # `import webdataset` now raises ImportError
    checks = run_checks("cpu")
    (wds,) = [c for c in checks if c.name == "webdataset"]
    assert not wds.ok and wds.detail.startswith("cannot import webdataset") and "data source" in wds.detail
    assert wds.fix == "pip install 'anymodal[webdataset]'"
    report = format_report(checks)
    assert "  --  webdataset: cannot import webdataset" in report
    assert "      get it: pip install 'anymodal[webdataset]'" in report
    assert report.splitlines()[-1].startswith("core: ok;")

    monkeypatch.setitem(sys.modules, "soundfile", None)
    with pytest.raises(SystemExit) as e:
        doctor_main(type("Args", (), {"device": "cpu"})())
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "  --  soundfile: cannot import soundfile" in out
    assert out.splitlines()[-1] == "core parts missing: soundfile: anymodal cannot run until they are installed"


def test_doctor_module_and_help_stay_light():
    code = ("import sys\nimport anymodal.doctor\nfrom anymodal.cli import build_parser\n"
            "assert 'doctor' in build_parser().format_help()\n"
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


# -- the CLI's error rule ----------------------------------------------------------------------------


def test_bad_input_is_one_line_a_bug_keeps_its_traceback(capsys):
    from anymodal.model.config import preset

    assert _guard(lambda: preset("huge")) == 1  # anymodal's own check names the bad input
    assert capsys.readouterr().err.strip() == ("anymodal: error: unknown model preset 'huge'; presets: "
                                               f"{sorted(__import__('anymodal.model.config').model.config.PRESETS)}")
    with pytest.raises(ValueError, match="invalid literal"):  # a ValueError from inside Python: a bug
        _guard(lambda: int("x"))
    with pytest.raises(KeyError):
        _guard(lambda: {}["missing"])
    with pytest.raises(KeyError, match="huge"):  # --debug: the traceback of a bad input too
        _guard(lambda: preset("huge"), debug=True)


def test_recipe_without_codec_weights_fails_at_setup_with_one_line(tmp_path):
    recipe = tmp_path / "fsq.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"tokenizers": ["text.bytes", {"name": "image.fsq"}]},
                                      "trainer": {"max_steps": 1, "logger": False}}))
    r = run_cli("fit", "--config", str(recipe), cwd=tmp_path)
    assert r.returncode == 1
    err = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("anymodal: error: ")]
    assert err == [ln for ln in r.stderr.strip().splitlines() if "error" in ln.lower()], r.stderr
    assert err[0].startswith("anymodal: error: image.fsq needs trained weights: checkpoint=") and \
        "random_init=True" in err[0], r.stderr
    assert "Traceback" not in r.stderr


def test_debug_flag_and_variable_show_the_traceback(tmp_path, monkeypatch, capsys):
    argv = ["eval", "--model", str(tmp_path / "nope"), "--tasks", "synth"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"anymodal: error: {tmp_path / 'nope'}: neither an export folder nor a .ckpt file"
    with pytest.raises(FileNotFoundError, match="nope"):
        main(["--debug", *argv])
    with pytest.raises(FileNotFoundError, match="nope"):
        main([*argv[:2], "--debug", *argv[2:]])  # anywhere on the line
    monkeypatch.setenv("ANYMODAL_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="nope"):
        main(argv)
