"""Evaluation harness: task files and registry, the built-in suite tasks, the POPE probe, the runner,
the report and the `anymodal eval` command, with real files and a real (random-init) model."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import run_cli

import anymodal as am
from anymodal.errors import ManifestError
from anymodal.evaluate import (
    Example,
    ProbeConfig,
    Task,
    TaskContext,
    TaskUnavailable,
    build_task,
    evaluate_manifest,
    evaluate_task,
    format_table,
    list_tasks,
    load_task_file,
    register_task,
    resolve_tasks,
    run_tasks,
    write_probe,
    write_report,
)
from anymodal.evaluate.likelihood import choice_scores, continuation_logprobs
from anymodal.data.synthetic.probe import OBJECTS, SETTINGS, negatives
from anymodal.model import debug
from anymodal.packing import pad
from anymodal.segments import Text
from anymodal.stream import IGNORE


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8}], debug()).eval()


@pytest.fixture
def suite(synth_root, tmp_path):
    """A private copy of the session's image-only suite (tests here write the probe into it)."""
    root = tmp_path / "suite"
    shutil.copytree(synth_root, root)
    return root


# ---- task files and the registry -----------------------------------------------------------------
def _line(task, i, text, answer, png, **extra):
    return json.dumps({"task": task, "id": f"{task}/{i}", "answer": answer, **extra,
                       "segments": [{"type": "text", "text": text}, {"type": "image", "path": png.name},
                                    {"type": "text", "text": answer, "role": "target"}]})


def test_task_file_reads_tasks_metrics_splits_and_references(tmp_path, png):
    f = tmp_path / "tasks.jsonl"
    f.write_text("\n".join([
        _line("colour", 0, "Colour?", "red", png, choices=["red", "blue"]),
        _line("caption", 0, "Describe.", "a red box", png, answers=["a red box", "a red rectangle"],
              metric=["cider", "bleu"], split="test"),
        _line("colour", 1, "Colour?", "blue", png, choices=["red", "blue"], split="val"),
        _line("caption", 1, "Describe.", "a red box", png, metric=["cider", "bleu"], meta={"k": 1}),
    ]) + "\n")
    tasks = load_task_file(f)
    assert [t.name for t in tasks] == ["colour", "caption"]
    colour, caption = tasks
    assert colour.metrics == ["choice", "exact_match"]  # the default with choices
    assert caption.metrics == ["cider", "bleu"]
    assert [e.answers for e in caption.examples] == [["a red box", "a red rectangle"], ["a red box"]]
    assert caption.examples[1].meta == {"k": 1}
    ex = colour.examples[0]
    assert [s.modality for s in ex.prompt] == ["text", "image"]  # the target is not in the prompt
    assert ex.prompt[1].data == str(png)  # relative media paths resolve against the file
    assert colour.kind == "image"
    assert [t.name for t in load_task_file(f, split="val")] == ["colour"]
    assert len(load_task_file(f, split="test")[0].examples) == 1


def test_task_file_errors_name_the_file_and_line(tmp_path, png):
    f = tmp_path / "bad.jsonl"
    f.write_text(_line("t", 0, "Q?", "a", png, metric="exact_match") + "\n" + _line("t", 1, "Q?", "b", png,
                                                                                    metric="bleu") + "\n")
    with pytest.raises(ManifestError, match=r"bad.jsonl:2: task 't' has metric \['bleu'\] here but "):
        load_task_file(f)
    f.write_text(_line("t", 0, "Q?", "a", png, metric="accuracy") + "\n")
    with pytest.raises(ValueError, match="bad.jsonl: task 't': unknown metric 'accuracy'"):
        load_task_file(f)
    f.write_text(_line("t", 0, "Q?", "a", png, answers="a") + "\n")
    with pytest.raises(ManifestError, match="bad.jsonl:1: 'answers' must be a list"):
        load_task_file(f)
    with pytest.raises(FileNotFoundError, match="task file not found"):
        load_task_file(tmp_path / "none.jsonl")


def test_task_validation():
    q = [Text("Q?")]
    with pytest.raises(ValueError, match="'pope' answer must be 'yes' or 'no'"):
        Task("p", [Example("0", q, ["maybe"])], ["pope"])
    with pytest.raises(ValueError, match="needs >= 2 choices"):
        Task("c", [Example("0", q, ["a"], ["a"])], ["choice"])
    with pytest.raises(ValueError, match="appears twice"):
        Task("d", [Example("0", q, ["a"]), Example("0", q, ["b"])])
    with pytest.raises(ValueError, match="need output='image' or 'audio'"):
        Task("g", [Example("0", q, meta={"colour": "red"})], ["check:image.colour"])
    with pytest.raises(ValueError, match="no reference answer"):
        Task("e", [Example("0", q)], ["exact_match"])
    assert Task("g", [Example("0", q, meta={"colour": "red"})], ["check:image.colour"], output="image").kind == \
        "text→image"


def test_registry_groups_globs_and_duplicates():
    assert resolve_tasks("image") == ["image.shape", "image.colour", "image.count", "image.position"]
    assert resolve_tasks("pope.*,pope.random") == ["pope.adversarial", "pope.popular", "pope.random"]
    assert resolve_tasks(["cross"]) == ["cross.beeps_squares", "cross.more_circles"]
    assert set(resolve_tasks("all")) == set(list_tasks())
    with pytest.raises(KeyError, match="unknown task or group 'nope'"):
        resolve_tasks("image,nope")
    with pytest.raises(ValueError, match="no task selected"):
        resolve_tasks(" , ")
    with pytest.raises(ValueError, match="already registered"):
        register_task("image.shape")(lambda ctx: None)


# ---- the suite's tasks -----------------------------------------------------------------------------
def test_suite_tasks_read_the_manifest_and_absent_ones_say_why(suite):
    ctx = TaskContext(data_root=suite)
    t = build_task("image.colour", ctx)
    assert len(t) == 10 and t.metrics == ["choice", "exact_match"] and t.kind == "image"
    assert all(e.choices == ["red", "green", "blue", "yellow"] and e.answers[0] in e.choices for e in t.examples)
    assert len(build_task("image.colour", TaskContext(data_root=suite, limit=3))) == 3
    with pytest.raises(TaskUnavailable, match="video.motion' unavailable: not in .*test.jsonl"):
        build_task("video.motion", ctx)
    with pytest.raises(TaskUnavailable, match="no synthetic suite given"):
        build_task("image.colour", TaskContext())
    with pytest.raises(TaskUnavailable, match="nope.jsonl not found"):
        build_task("image.colour", TaskContext(data_root=suite, split="nope"))


# ---- the POPE probe -------------------------------------------------------------------------------
def test_probe_is_balanced_with_true_negatives_of_each_kind(tmp_path):
    paths = write_probe(tmp_path, ProbeConfig(images=40))
    tasks = {t.name: t for t in load_task_file(paths["test"])}
    assert set(tasks) == {"pope.random", "pope.popular", "pope.adversarial", "caption.shapes"}
    asked_no = {}
    for setting in SETTINGS:
        t = tasks[f"pope.{setting}"]
        assert t.metrics == ["pope"]
        answers = Counter(e.answers[0] for e in t.examples)
        assert answers["yes"] == answers["no"] > 0  # balanced
        asked_no[setting] = []
        for e in t.examples:
            obj, scene = e.meta["object"], e.meta["scene"]
            assert e.prompt[0].data == f"Is there a {obj} in the image?"
            assert (obj in scene) == (e.answers[0] == "yes")  # the ground truth is the drawn scene
            if e.answers[0] == "no":
                asked_no[setting].append(obj)
    # popular and adversarial negatives concentrate on few objects; random ones spread out
    assert len(set(asked_no["random"])) > len(set(asked_no["popular"]))
    # popular: the set's most frequent object is asked about in every image it is absent from
    frequency = Counter(o for e in tasks["caption.shapes"].examples for o in e.meta["scene"])
    (top, n_top), (_, n_next) = frequency.most_common(2)
    assert n_top > n_next
    popular = tasks["pope.popular"].examples
    absent = {e.id.split("/")[2] for e in popular if top not in e.meta["scene"]}
    asked = {e.id.split("/")[2] for e in popular if e.meta["object"] == top and e.answers == ["no"]}
    assert absent and asked == absent
    caption = tasks["caption.shapes"]
    assert caption.metrics == ["cider", "bleu"]
    two = next(e for e in caption.examples if len(e.meta["scene"]) == 2)
    a, b = two.meta["scene"]
    assert sorted(two.answers) == sorted([f"a {a} and a {b}", f"a {b} and a {a}"])
    # idempotent: the same config leaves the files alone
    before = paths["test"].stat().st_mtime_ns
    assert write_probe(tmp_path, ProbeConfig(images=40))["test"].stat().st_mtime_ns == before


def test_negatives_follow_their_pope_setting():
    """Hand-made statistics with one right answer per setting."""
    import random

    scene = ["red circle", "blue square"]
    frequency = Counter({"green triangle": 9, "yellow circle": 7, "red square": 5, "red circle": 20, "blue square": 20})
    cooccur = {o: Counter() for o in OBJECTS}
    cooccur["red circle"].update({"yellow square": 4, "green circle": 1, "blue square": 9})
    cooccur["blue square"].update({"green circle": 2, "red square": 1, "red circle": 9})
    rng = random.Random(0)
    # popular: the most frequent absent objects (present ones never count, however frequent)
    assert negatives(scene, 2, "popular", rng, frequency, cooccur) == ["green triangle", "yellow circle"]
    # adversarial: the absent objects that co-occur most with the present ones, summed (4; 1 + 2 = 3)
    assert negatives(scene, 2, "adversarial", rng, frequency, cooccur) == ["yellow square", "green circle"]
    drawn = negatives(scene, 5, "random", rng, frequency, cooccur)
    assert len(set(drawn)) == 5 and not set(drawn) & set(scene)
    with pytest.raises(ValueError, match="unknown POPE setting 'nope'"):
        negatives(scene, 1, "nope", rng, frequency, cooccur)


def test_probe_images_hold_exactly_their_objects(tmp_path):
    from PIL import Image

    from anymodal.data.synthetic import COLOURS

    paths = write_probe(tmp_path, ProbeConfig(images=12))
    caption = next(t for t in load_task_file(paths["test"]) if t.name == "caption.shapes")
    for e in caption.examples:
        img = np.asarray(Image.open(e.prompt[1].data).convert("RGB")).astype(int)
        present = {o.split()[0] for o in e.meta["scene"]}
        for name, rgb in COLOURS.items():
            pixels = (np.abs(img - np.array(rgb)).max(axis=-1) <= 8).sum()
            assert (pixels > 20) == (name in present), (e.id, name, pixels)


# ---- likelihood -----------------------------------------------------------------------------------
def test_packed_continuation_logprobs_equal_one_stream_at_a_time(model, suite):
    task = build_task("image.shape", TaskContext(data_root=suite, limit=3))
    prompts = [e.prompt for e in task.examples]
    conts = ["circle", "square", "tri"]
    got = continuation_logprobs(model, prompts, conts, add_eos=True)
    for p, c, (lp, greedy) in zip(prompts, conts, got):
        s = model.builder.build(list(p) + [Text(c, role="target")])
        b = pad([s], model.vocab.pad)
        with torch.no_grad():
            logits = model(b)[0].float()
        labels = b.labels[0]
        has = labels != IGNORE
        want = torch.log_softmax(logits, -1)[has].gather(-1, labels[has][:, None]).sum()
        assert lp == pytest.approx(float(want), abs=1e-4)
        assert greedy == bool((logits.argmax(-1)[has] == labels[has]).all())
    assert int(has.sum()) == len("tri") + 1  # the answer's bytes and <eos>, nothing of the prompt
    scores = choice_scores(model, prompts[:2], [conts, conts[:2]])
    same_prompt = continuation_logprobs(model, [prompts[0]] * 3 + [prompts[1]] * 2, conts + conts[:2])
    assert scores[0] + scores[1] == pytest.approx([lp for lp, _ in same_prompt], abs=1e-4)


# ---- the runner and the report ----------------------------------------------------------------------
def test_random_model_scores_near_chance_and_every_task_is_listed(model, suite):
    report = run_tasks(model, "image,video.motion,gen.text_image", TaskContext(data_root=suite), batch_size=20)
    tasks = report["tasks"]
    image = [tasks[n] for n in resolve_tasks("image")]
    for r in image:
        assert r["status"] == "ok" and r["metric"] == "mc_accuracy" and r["n"] == 10
        assert set(r["metrics"]) == {"mc_accuracy", "exact_match"}
    mean_acc = np.mean([r["score"] for r in image])
    mean_chance = np.mean([r["chance"] for r in image])
    assert mean_chance == pytest.approx((1 / 3 + 3 / 4) / 4)
    assert abs(mean_acc - mean_chance) < 0.2, image  # untrained: a guess
    assert report["overall"]["n"] == 40
    assert list(report["by_kind"]) == ["image"] and report["by_kind"]["image"]["n"] == 40
    assert report["by_kind"]["image"]["accuracy"] == pytest.approx(report["overall"]["accuracy"])
    assert tasks["video.motion"]["status"] == "absent" and tasks["video.motion"]["chance"] == 0.25
    assert tasks["gen.text_image"]["status"] == "absent"
    table = format_table(report)
    for name in tasks:
        assert f"| {name} |" in table
    assert "| video.motion | video | 0 | – | – | 0.250 | absent: not in" in table


@pytest.mark.slow
def test_probe_and_caption_report(model, suite, tmp_path):
    report = run_tasks(model, "pope.random,caption.shapes", TaskContext(data_root=suite, limit=12), batch_size=12)
    pope = report["tasks"]["pope.random"]
    assert pope["metric"] == "f1" and pope["chance"] == 0.5 and pope["n"] == 12
    assert {"f1", "precision", "recall", "accuracy", "yes_ratio", "unparsed"} <= set(pope["metrics"])
    positives = [p for p in pope["predictions"] if p["answers"] == ["yes"]]
    assert pope["metrics"]["recall"] == pytest.approx(sum(p["parsed"] == "yes" for p in positives) / len(positives))
    assert pope["metrics"]["yes_ratio"] == pytest.approx(
        sum(p["parsed"] == "yes" for p in pope["predictions"]) / 12)
    cap = report["tasks"]["caption.shapes"]
    assert cap["metric"] == "cider" and cap["chance"] > 0 and "bleu" in cap["metrics"]
    assert "POPE F1" in format_table(report) and "yes-ratio" in format_table(report)
    paths = write_report(report, tmp_path / "out")
    saved = json.loads(paths["json"].read_text())
    assert "predictions" not in saved["tasks"]["pope.random"] and saved["overall"]["n"] == 12
    preds = [json.loads(x) for x in paths["predictions"].read_text().splitlines()]
    assert len(preds) == 24 and {p["task"] for p in preds} == {"pope.random", "caption.shapes"}
    assert paths["md"].read_text().startswith("| task | kind | n | metric | score | chance | notes |")


@pytest.fixture(scope="module")
def gen_suite(tmp_path_factory):
    from anymodal.data.synthetic import GenConfig, synthesize_gen

    root = tmp_path_factory.mktemp("gen")
    synthesize_gen(root, GenConfig(tasks=["gen.text_image"], train_per_task=1, val_per_task=1, test_per_task=3))
    return root


def test_generation_tasks_need_a_discrete_output_tokenizer(model, gen_suite):
    r = run_tasks(model, "gen.text_image", TaskContext(data_root=gen_suite))["tasks"]["gen.text_image"]
    assert r["status"] == "unsupported" and "no discrete image tokenizer" in r["reason"]
    assert r["chance"] == pytest.approx(1 / 12)  # colour (1/4) and shape (1/3) both right by luck


@pytest.mark.slow
def test_generation_task_refuses_random_codec_media_and_scores_codes(gen_suite):
    torch.manual_seed(0)
    m = am.AnyModal(["text.bytes", {"name": "image.fsq", "random_init": True}], debug())
    task = build_task("gen.text_image", TaskContext(data_root=gen_suite))
    assert task.output == "image" and task.kind == "text→image"
    assert {"colour", "shape", "position"} <= set(task.examples[0].meta)  # the record's target
    assert task.examples[0].target.modality == "image"  # the reference the codes are compared with
    checks = ["check:image.colour+image.shape", "check:image.colour", "check:image.shape", "check:image.position"]
    report = run_tasks(m, "gen.text_image", TaskContext(data_root=gen_suite))
    r = report["tasks"]["gen.text_image"]
    # random FSQ weights: the decoded pixels say nothing, so no check scores them, and the
    # report says why; the generated codes are still scored against the reference's codes
    assert r["status"] == "ok" and r["n"] == 3 and r["metric"] == "token_accuracy"
    assert list(r["refused"]) == checks
    assert "image.fsq has random weights (pretrained=False)" in r["refused"]["check:image.colour"]
    assert ("not scored (image.colour+image.shape, image.colour, image.shape, image.position): image.fsq has "
            "random weights (pretrained=False)") in format_table(report)
    assert set(r["metrics"]) == {"token_accuracy", "exact_codes", "majority_code_accuracy", "prompt_blind_accuracy"}
    assert r["chance"] == r["metrics"]["prompt_blind_accuracy"] > 0
    # a task scored by checks alone has nothing left to score
    r = evaluate_task(m, Task("checks.only", task.examples, checks[:1], output="image"))
    assert r["status"] == "unsupported" and r["reason"].startswith("image.fsq has random weights")
    # the same model with trained weights declared: the checks score its decoded images
    next(t for t in m.vocab.tokenizers if t.name == "image.fsq").pretrained = True
    r = run_tasks(m, "gen.text_image", TaskContext(data_root=gen_suite))["tasks"]["gen.text_image"]
    assert "refused" not in r and r["metric"] == checks[0] and set(checks) <= set(r["metrics"])
    assert r["chance"] == pytest.approx(1 / 12)


def test_tasks_need_the_models_input_tokenizers(suite):
    text_only = am.AnyModal(["text.bytes"], debug())
    report = run_tasks(text_only, "image.colour", TaskContext(data_root=suite, limit=2))
    r = report["tasks"]["image.colour"]
    assert r["status"] == "unsupported" and r["reason"] == "the model has no tokenizer for image inputs"


def test_undecodable_media_are_skipped_and_counted(model, suite):
    first = build_task("image.colour", TaskContext(data_root=suite, limit=4)).examples[0]
    path = first.prompt[1].data
    with open(path, "r+b") as f:
        f.truncate(40)
    r = run_tasks(model, "image.colour", TaskContext(data_root=suite, limit=4))["tasks"]["image.colour"]
    assert r["skipped"] == 1 and r["n"] == 3


def test_manifest_api_keeps_its_shape(model, suite):
    report = evaluate_manifest(model, suite / "test.jsonl", limit=8)
    assert report["overall"]["n"] == 8
    for t in report["tasks"].values():
        assert {"n", "accuracy", "chance"} <= set(t)
    assert report["examples"] and report["manifest"].endswith("test.jsonl")


# ---- the command -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_command_writes_the_table(model, suite, tmp_path):
    exp = tmp_path / "m"
    model.export(exp)
    out = tmp_path / "report"
    r = run_cli("eval", "--model", str(exp), "--data", str(suite), "--tasks", "image.colour,video.motion,pope.random",
                "--limit", "6", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    md = (out / "report.md").read_text()
    assert md in r.stdout
    for name in ("image.colour", "video.motion", "pope.random"):
        assert f"| {name} |" in md
    assert "POPE F1" in md and "yes-ratio" in md
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"]["image.colour"]["n"] == 6
    r = run_cli("eval", "--model", str(exp), "--tasks", "image.nope")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(
        "anymodal: error: unknown task or group 'image.nope'")
    r = run_cli("eval", "--list-tasks")
    assert r.returncode == 0 and "pope.adversarial" in r.stdout and "cross.more_circles" in r.stdout


# ---- the Lightning callback ------------------------------------------------------------------------
@pytest.mark.slow
def test_callback_logs_per_task_scores_during_validation(suite):
    import lightning as L

    from anymodal.evaluate.callback import EvalCallback
    from anymodal.model import ModelConfig
    from anymodal.train.data import AnyModalDataModule
    from anymodal.train.module import AnyModalModule

    L.seed_everything(0)
    module = AnyModalModule(tokenizers=["text.bytes", {"name": "image.patch", "patch_size": 8}],
                            arch=ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1), warmup_steps=1)
    cb = EvalCallback(tasks="image.colour,pope.random,video.motion", limit=4)
    trainer = L.Trainer(max_steps=2, val_check_interval=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=1, callbacks=[cb])
    trainer.fit(module, AnyModalDataModule(root=str(suite), seq_len=256, batch_size=8))
    m = trainer.callback_metrics
    assert {"eval/image.colour", "eval/acc_image.colour", "eval/pope.random", "eval/acc_pope.random",
            "eval/acc"} <= set(m)
    assert "eval/video.motion" not in m  # absent from an image-only suite: skipped, not fatal
    report = cb.last_report
    assert report["context"]["split"] == "val"
    assert float(m["eval/image.colour"]) == pytest.approx(report["tasks"]["image.colour"]["score"])
    assert report["tasks"]["image.colour"]["n"] == 4 and report["tasks"]["video.motion"]["status"] == "absent"
    with pytest.raises(KeyError, match="unknown task or group"):
        EvalCallback(tasks="image.nope")


def test_records_without_answers(model, tmp_path):
    from anymodal.evaluate import evaluate_records

    (tmp_path / "docs.jsonl").write_text(json.dumps({"segments": [{"type": "text", "text": "just a document"}]}) + "\n")
    with pytest.raises(ValueError, match="docs.jsonl: no record has an 'answer'"):
        evaluate_manifest(model, tmp_path / "docs.jsonl")
    from anymodal.data.manifest import read_manifest

    report = evaluate_records(model, read_manifest(tmp_path / "docs.jsonl"))  # the training hook's path
    assert report["tasks"] == {} and report["overall"]["n"] == 0
