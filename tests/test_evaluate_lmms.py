"""The lmms-eval adapter: requests of lmms-eval's shape in, the model's answers and log-likelihoods out.

The first tests build request objects of the shape lmms-eval's ``Instance`` has (``.args``) and
need no lmms-eval; the last runs lmms-eval itself on a small local task when it is installed.
"""

import json
import textwrap
from dataclasses import dataclass

import pytest
import torch

import anymodal as am
from anymodal.evaluate.likelihood import continuation_logprobs
from anymodal.evaluate.lmms_adapter import AnyModalLMMS, build_prompt, visual_to_segment
from anymodal.model import debug


@dataclass
class Request:
    """lmms-eval's ``Instance`` as a model sees it: only ``args`` is read."""

    args: tuple


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8}], debug()).eval()


@pytest.fixture
def docs(synth_root):
    recs = [json.loads(x) for x in (synth_root / "test.jsonl").read_text().splitlines()[:5]]
    return [{"question": r["segments"][0]["text"], "image": str(synth_root / r["segments"][1]["path"]),
             "answer": r["answer"], "choices": r["choices"]} for r in recs]


def _visual(doc):
    from PIL import Image

    return [Image.open(doc["image"]).convert("RGB")]


def test_generate_until_matches_direct_generation(model, docs):
    lm = AnyModalLMMS(model=model, batch_size=2, max_new_tokens=6)
    lm.task_dict = {"colour": {"test": docs}}
    reqs = [Request((d["question"], {"max_new_tokens": 6, "until": ["\n", "e"]}, _visual, i, "colour", "test"))
            for i, d in enumerate(docs)]
    got = lm.generate_until(reqs)
    direct = model.generate([[am.Image(_visual(d)[0]), d["question"]] for d in docs], max_new_tokens=6)
    assert got == [o.text.split("\n")[0].split("e")[0] for o in direct]


def test_loglikelihood_matches_the_scorer(model, docs):
    lm = AnyModalLMMS(model=model)
    lm.task_dict = {"colour": {"test": docs}}
    reqs = [Request((d["question"], " " + d["answer"], _visual, i, "colour", "test")) for i, d in enumerate(docs)]
    reqs.append(Request((docs[0]["question"], lambda doc: doc["answer"], _visual, 0, "colour", "test")))
    got = lm.loglikelihood(reqs)
    want = continuation_logprobs(model, [[am.Image(_visual(d)[0]), d["question"]] for d in docs + docs[:1]],
                                 [" " + d["answer"] for d in docs] + [docs[0]["answer"]], add_eos=False)
    assert [g[1] for g in got] == [w[1] for w in want]
    assert [g[0] for g in got] == pytest.approx([w[0] for w in want], abs=1e-4)


def test_prompts_interleave_at_placeholders_and_take_every_kind_of_visual(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (8, 8))
    segs = build_prompt("Look: <image> and <image>?", [img, str(tmp_path / "b.png")])
    assert [(s.modality, s.data if s.modality == "text" else None) for s in segs] == [
        ("text", "Look: "), ("image", None), ("text", " and "), ("image", None), ("text", "?")]
    assert [s.modality for s in build_prompt("What?", [img])] == ["image", "text"]
    with pytest.raises(ValueError, match="1 <image> placeholders for 2 visuals"):
        build_prompt("<image> x", [img, img])
    audio = visual_to_segment({"array": [0.0, 0.5, -0.5], "sampling_rate": 16000})
    assert audio.modality == "audio" and audio.options["sample_rate"] == 16000 and tuple(audio.data.shape) == (1, 3)
    assert visual_to_segment("clip.MP4").modality == "video"
    assert visual_to_segment("a.wav").modality == "audio"
    with pytest.raises(TypeError, match="visual of type int"):
        visual_to_segment(3)


def test_adapter_errors_are_clear(model):
    with pytest.raises(ValueError, match="exactly one of pretrained"):
        AnyModalLMMS()
    lm = AnyModalLMMS(model=model)
    with pytest.raises(KeyError, match="task 'nope' split 'test' doc 0"):
        lm.generate_until([Request(("q", {}, _visual, 0, "nope", "test"))])
    with pytest.raises(NotImplementedError, match="multi-round"):
        lm.generate_until_multi_round([])


@pytest.mark.slow
def test_lmms_eval_runs_a_local_task_through_the_adapter(model, docs, tmp_path, monkeypatch):
    """lmms-eval's own evaluator on a YAML task over local files (generation), and its Instance
    objects through the adapter's loglikelihood.

    Not ``simple_evaluate`` with ``output_type: multiple_choice``: lmms-eval 0.7.3's evaluator
    turns every loglikelihood response into a string (``unwrap_generation_output``), so its own
    ``dummy`` model fails there the same way ("too many values to unpack").
    """
    pytest.importorskip("lmms_eval.evaluator")
    from lmms_eval.api.instance import Instance
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "am_utils.py").write_text(textwrap.dedent("""
        from PIL import Image
        def doc_to_visual(doc):
            return [Image.open(doc["image"]).convert("RGB")]
        def doc_to_text(doc, lmms_eval_specific_kwargs=None):
            return doc["question"]
    """))
    (tasks / "am_gen.yaml").write_text(textwrap.dedent(f"""
        task: am_gen
        dataset_path: json
        dataset_kwargs: {{data_files: {{test: {tmp_path / 'docs.json'}}}}}
        test_split: test
        doc_to_visual: !function am_utils.doc_to_visual
        doc_to_text: !function am_utils.doc_to_text
        output_type: generate_until
        doc_to_target: answer
        generation_kwargs: {{max_new_tokens: 6, until: ["\\n"]}}
        metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
    """))
    lm = AnyModalLMMS(model=model, batch_size=4)
    res = simple_evaluate(model=lm, tasks=["am_gen"], log_samples=True,
                          task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    # the answers lmms-eval logged are the model's greedy answers, cut at "\n", and scored by it
    direct = model.generate([[am.Image(_visual(d)[0]), d["question"]] for d in docs], max_new_tokens=6)
    samples = sorted(res["samples"]["am_gen"], key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in samples] == [o.text.split("\n")[0] for o in direct]
    em = sum(o.text.split("\n")[0] == d["answer"] for o, d in zip(direct, docs)) / len(docs)
    assert res["results"]["am_gen"]["exact_match,none"] == pytest.approx(em)
    # lmms-eval's Instance objects, as its multiple-choice tasks build them, through loglikelihood
    reqs = [Instance("loglikelihood", (d["question"], " " + c, _visual, i, "am_gen", "test"), idx=k,
                     metadata={"task": "am_gen", "doc_id": i, "repeats": 1})
            for i, d in enumerate(docs) for k, c in enumerate(d["choices"])]
    lm = AnyModalLMMS(model=model)  # simple_evaluate ends with lm.clean(), which drops the model
    lm.task_dict = {"am_gen": {"test": docs}}
    got = lm.loglikelihood(reqs)
    want = continuation_logprobs(model, [[am.Image(_visual(docs[r.args[3]])[0]), r.args[0]] for r in reqs],
                                 [r.args[1] for r in reqs], add_eos=False)
    assert [g[0] for g in got] == pytest.approx([w[0] for w in want], abs=1e-4)
