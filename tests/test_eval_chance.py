"""Chance in evaluation reports: the uniform guess (1/choices) and the evaluated set's
majority-class baseline, both shown; report.json stores them rounded."""

import json

import torch

import anymodal as am
from anymodal.evaluate.metrics import majority_baseline
from anymodal.evaluate.runner import evaluate, format_table, write_report
from anymodal.evaluate.tasks import Example, Task
from anymodal.model import debug

COLOURS = ["red", "blue", "green", "yellow", "white", "black", "grey", "pink", "brown", "cyan"]


def test_majority_baseline():
    assert majority_baseline([["red"], ["red"], ["blue"], ["Red."]]) == 0.75  # normalised like exact match
    assert majority_baseline([["a"], ["b", "a"], ["c"]]) == 2 / 3  # any gold answer counts


def test_report_gives_uniform_chance_and_majority_baseline_rounded(tmp_path):
    # 10 choices each (uniform chance 1/10, a float sum that is not exactly 0.1) and 7 of 10 "red"
    answers = ["red"] * 7 + ["blue", "green", "cyan"]
    examples = [Example(f"q{i}", [am.Text("Which colour?")], [a], COLOURS) for i, a in enumerate(answers)]
    torch.manual_seed(0)
    model = am.AnyModal(["text.bytes"], debug()).eval()
    report = evaluate(model, [Task("colour", examples, ["choice"])])
    r = report["tasks"]["colour"]
    assert abs(r["chance"] - 0.1) < 1e-12 and r["majority"] == 0.7
    assert report["overall"]["majority"] == 0.7
    table = format_table(report)
    assert "majority-class baseline 0.700" in table.splitlines()[2]
    assert table.splitlines()[-1].endswith("n-weighted over tasks with an accuracy; majority-class baseline 0.700 |")
    saved = json.loads(write_report(report, tmp_path)["json"].read_text())
    t = saved["tasks"]["colour"]
    assert (t["chance"], t["chances"]["mc_accuracy"], t["accuracy_chance"], t["majority"]) == (0.1, 0.1, 0.1, 0.7)
    assert saved["overall"]["chance"] == 0.1
    assert t["score"] == round(r["score"], 6)
