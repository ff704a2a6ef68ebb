"""Metrics: exact match, multiple-choice accuracy, the POPE hallucination scores, BLEU and CIDEr-D.

Every function here is pure (strings and numbers in, numbers out), so each is tested on
hand-made cases with exact expected values (``tests/test_metrics.py``).

- :func:`normalize_answer` / :func:`exact_match`: SQuAD/VQA-style normalised exact match.
- :func:`choice_accuracy`: the argmax of per-choice scores (lm-evaluation-harness ``acc``).
- :func:`pope_scores`: precision, recall, F1, accuracy and yes-ratio of yes/no answers, "yes"
  being the positive class, after POPE's answer parsing (:func:`parse_yes_no`; Li et al. 2023,
  "Evaluating Object Hallucination in Large Vision-Language Models").
- :func:`bleu`: corpus BLEU from ``sacrebleu`` (Post 2018), on its 0-100 scale.
- :func:`cider_d`: CIDEr-D (Vedantam et al. 2015) as the coco-caption toolkit computes it
  (n = 1..4, tf-idf over the corpus' references, clipped counts, Gaussian length penalty with
  sigma = 6, x10). Implemented here because the maintained package for it (``pycocoevalcap``)
  is a 100 MB wheel of Java jars for its other metrics and was last released in 2020.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Sequence

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and articles, collapse spaces (SQuAD/VQA-style).

    >>> normalize_answer("  The Top-Left. ")
    'top left'
    """
    s = _PUNCT.sub(" ", s.lower())
    return " ".join(w for w in s.split() if w not in ("a", "an", "the"))


def exact_match(prediction: str, references: Sequence[str]) -> bool:
    """True when the normalised prediction equals any normalised reference.

    >>> exact_match("Circle.", ["circle", "round"])
    True
    """
    if isinstance(references, str):
        references = [references]
    p = normalize_answer(prediction)
    return any(p == normalize_answer(r) for r in references)


def choice_accuracy(scores: Sequence[Sequence[float]], choices: Sequence[Sequence[str]],
                    references: Sequence[Sequence[str]]) -> float:
    """Fraction of examples whose best-scoring choice is a reference answer.

    ``scores[i][k]`` is the score (e.g. the log-likelihood) of ``choices[i][k]``; ties go to the
    first choice (as ``argmax`` does), so a model that scores everything equally is a
    first-choice guesser, not a perfect one.

    >>> choice_accuracy([[-1.0, -0.5], [-0.1, -2.0]], [["a", "b"], ["a", "b"]], [["b"], ["b"]])
    0.5
    """
    if not (len(scores) == len(choices) == len(references)):
        raise ValueError(f"choice_accuracy: {len(scores)} score rows, {len(choices)} choice lists and "
                         f"{len(references)} reference lists must have the same length")
    if not scores:
        raise ValueError("choice_accuracy: no examples")
    correct = 0
    for s, c, refs in zip(scores, choices, references):
        if len(s) != len(c) or not c:
            raise ValueError(f"choice_accuracy: {len(s)} scores for {len(c)} choices {list(c)}")
        best = max(range(len(s)), key=lambda k: (s[k], -k))
        correct += exact_match(c[best], refs)
    return correct / len(scores)


def uniform_choice_chance(choices: Sequence[Sequence[str]]) -> float:
    """Expected accuracy of a uniform guess among each example's choices: mean of ``1/K``."""
    if not choices or any(not c for c in choices):
        raise ValueError("uniform_choice_chance: every example needs at least one choice")
    return sum(1.0 / len(c) for c in choices) / len(choices)


def majority_baseline(answers: Sequence[Sequence[str]]) -> float:
    """Accuracy of always giving the evaluated set's most common answer (its first gold answer,
    normalised): the floor a model that ignores the input reaches on an unbalanced set.

    >>> majority_baseline([["red"], ["red"], ["blue"], ["Red."]])
    0.75
    """
    if not answers or any(not a for a in answers):
        raise ValueError("majority_baseline: every example needs at least one answer")
    common = Counter(normalize_answer(a[0]) for a in answers).most_common(1)[0][0]
    return sum(common in {normalize_answer(x) for x in a} for a in answers) / len(answers)


# ---- POPE ----------------------------------------------------------------------------------------
def parse_yes_no(text: str) -> str:
    """POPE's rule: keep the first sentence; "no" if it holds the word "no" or "not", else "yes".

    So an answer with neither word counts as "yes" (as in POPE's evaluation script); the
    runner also reports how many answers held neither, so a model that babbles is visible.

    >>> parse_yes_no("No, there is not."), parse_yes_no("Yes."), parse_yes_no("circle")
    ('no', 'yes', 'yes')
    """
    first = text.split(".")[0] if "." in text else text
    words = _PUNCT.sub(" ", first.lower()).split()
    return "no" if ("no" in words or "not" in words) else "yes"


def pope_scores(predictions: Sequence[str], labels: Sequence[str]) -> dict:
    """POPE scores of yes/no predictions against yes/no labels ("yes" is the positive class).

    Returns ``accuracy``, ``precision``, ``recall``, ``f1``, ``yes_ratio`` (fraction of "yes"
    predictions: 0.5 on a balanced probe for an unbiased model) and the counts ``tp fp tn fn``.
    Precision (recall) is 0 when nothing was predicted (labelled) positive, as scikit-learn's
    ``zero_division=0``.

    >>> s = pope_scores(["yes", "yes", "no", "no"], ["yes", "no", "no", "yes"])
    >>> s["precision"], s["recall"], s["f1"], s["yes_ratio"]
    (0.5, 0.5, 0.5, 0.5)
    """
    if len(predictions) != len(labels):
        raise ValueError(f"pope_scores: {len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("pope_scores: no examples")
    for name, seq in (("prediction", predictions), ("label", labels)):
        bad = sorted({x for x in seq if x not in ("yes", "no")})
        if bad:
            raise ValueError(f"pope_scores: every {name} must be 'yes' or 'no', got {bad}")
    tp = sum(p == "yes" and y == "yes" for p, y in zip(predictions, labels))
    fp = sum(p == "yes" and y == "no" for p, y in zip(predictions, labels))
    tn = sum(p == "no" and y == "no" for p, y in zip(predictions, labels))
    fn = sum(p == "no" and y == "yes" for p, y in zip(predictions, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(labels)
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / n, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def pope_chance(labels: Sequence[str]) -> dict:
    """Expected POPE scores of a fair coin (yes with probability 1/2) on these labels.

    Precision is then the positive rate ``pi``, recall 1/2, so F1 = ``pi / (pi + 1/2)``;
    0.5 for every score on a balanced probe.
    """
    if not labels:
        raise ValueError("pope_chance: no labels")
    pi = sum(y == "yes" for y in labels) / len(labels)
    return {"accuracy": 0.5, "precision": pi, "recall": 0.5, "f1": (pi / (pi + 0.5)) if pi else 0.0,
            "yes_ratio": 0.5}


# ---- captions ------------------------------------------------------------------------------------
def _check_corpus(name: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{name}: {len(predictions)} predictions for {len(references)} reference lists")
    if not predictions:
        raise ValueError(f"{name}: no examples")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"{name}: example {i} needs a non-empty list of reference strings, got {refs!r}")


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (0-100) with sacrebleu's defaults (13a tokenisation, exp smoothing).

    ``references[i]`` lists the references of prediction ``i``; their number may vary.

    >>> round(bleu(["a b c d e"], [["a b c d f g"]]), 4)  # p_n = 4/5, 3/4, 2/3, 1/2; BP = e^(1 - 6/5)
    54.7518
    """
    _check_corpus("bleu", predictions, references)
    try:
        import sacrebleu
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("BLEU needs sacrebleu: pip install 'anymodal[eval]'") from e
    width = max(len(r) for r in references)
    streams = [[list(r)[k] if k < len(r) else None for r in references] for k in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


def _caption_tokens(s: str) -> list[str]:
    # coco-caption runs the Stanford PTB tokenizer (Java); lower-casing and splitting off
    # punctuation gives the same tokens on plain captions like ours without a JVM.
    return _PUNCT.sub(" ", s.lower()).split()


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D of a corpus: (mean score, per-example scores), on coco-caption's scale (x10).

    For each n-gram order, the prediction and each reference become tf-idf vectors, where the
    idf is ``log(N) - log(max(1, df))`` over the N examples' reference sets; the similarity is
    ``sum_g min(h_g, r_g) * r_g / (|h| |r|)`` (hypothesis counts clipped by the reference),
    times ``exp(-(len_h - len_r)^2 / (2 sigma^2))``. An example scores 10 x the mean over
    orders of the mean over its references. idf needs a corpus: with one example log(N) = 0
    and every score is 0, as in coco-caption.

    >>> cider_d(["a b", "c d"], [["a b"], ["c d"]])[0]  # unigram and bigram cosines 1, orders 3-4 empty
    5.0
    """
    _check_corpus("cider_d", predictions, references)
    refs_ng = [[_ngrams(_caption_tokens(r), n) for r in refs] for refs in references]
    hyps_ng = [_ngrams(_caption_tokens(p), n) for p in predictions]
    df: Counter = Counter()
    for refs in refs_ng:
        df.update({g for r in refs for g in r})
    log_n = math.log(len(references))

    def vec(counts: Counter):
        v: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        for g, tf in counts.items():
            w = tf * (log_n - math.log(max(1.0, df[g])))
            v[len(g) - 1][g] = w
            norm[len(g) - 1] += w * w
        length = sum(tf for g, tf in counts.items() if len(g) == 1)  # words
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for h, refs in zip(hyps_ng, refs_ng):
        vh, nh, lh = vec(h)
        total = [0.0] * n
        for r in refs:
            vr, nr, lr = vec(r)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                dot = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] and nr[k]:
                    dot /= nh[k] * nr[k]
                total[k] += dot * penalty
        scores.append(10.0 * sum(total) / n / len(refs))
    return sum(scores) / len(scores), scores


def shuffled_baseline(references: Sequence[Sequence[str]]) -> list[str]:
    """Each example's "prediction" = the first reference of the next example (a derangement).

    Scoring this with a caption metric gives the metric's floor on this corpus: captions of
    the right style about the wrong content. It is the chance column of caption tasks.
    """
    if len(references) < 2:
        return ["" for _ in references]
    return [references[(i + 1) % len(references)][0] for i in range(len(references))]
