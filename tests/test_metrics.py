"""Metrics on hand-made cases with exact expected values (worked out in the comments)."""

import math

import pytest

from anymodal.evaluate.metrics import (
    bleu,
    choice_accuracy,
    cider_d,
    exact_match,
    normalize_answer,
    parse_yes_no,
    pope_chance,
    pope_scores,
    shuffled_baseline,
    uniform_choice_chance,
)


@pytest.mark.parametrize("raw, norm", [
    ("  The Top-Left. ", "top left"),
    ("A circle!", "circle"),
    ("an  apple, THE pear", "apple pear"),
    ("", ""),
    ("4", "4"),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_any_reference():
    assert exact_match("Circle.", ["square", "circle"])
    assert exact_match("the red", "red")  # a bare string is one reference
    assert not exact_match("circles", ["circle"])
    assert not exact_match("", ["circle"])


def test_choice_accuracy_and_ties():
    # example 0: best is "b" (correct); 1: "a" (wrong); 2: a tie goes to the first choice "a" (correct)
    scores = [[-1.0, -0.5], [-0.1, -2.0], [-1.0, -1.0]]
    choices = [["a", "b"]] * 3
    assert choice_accuracy(scores, choices, [["b"], ["b"], ["a"]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="same length"):
        choice_accuracy(scores, choices, [["b"]])
    with pytest.raises(ValueError, match="2 scores for 3 choices"):
        choice_accuracy([[0.0, 1.0]], [["a", "b", "c"]], [["a"]])


def test_uniform_choice_chance():
    assert uniform_choice_chance([["a", "b"], ["a", "b", "c", "d"]]) == pytest.approx((1 / 2 + 1 / 4) / 2)
    with pytest.raises(ValueError):
        uniform_choice_chance([[]])


@pytest.mark.parametrize("text, parsed", [
    ("Yes", "yes"), ("yes, there is.", "yes"), ("No", "no"), ("no.", "no"),
    ("There is not a circle.", "no"), ("Yes. No other shapes.", "yes"),  # POPE keeps the first sentence
    ("circle", "yes"), ("", "yes"),  # neither word: POPE's script reads it as yes
    ("Nope", "yes"),  # whole words only
])
def test_parse_yes_no_follows_pope(text, parsed):
    assert parse_yes_no(text) == parsed


def test_pope_scores_hand_case():
    preds = ["yes", "yes", "yes", "no", "no", "yes"]
    labels = ["yes", "no", "yes", "no", "yes", "yes"]
    s = pope_scores(preds, labels)
    # tp = 3 (0, 2, 5), fp = 1 (1), tn = 1 (3), fn = 1 (4)
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (3, 1, 1, 1)
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 4)
    assert s["f1"] == pytest.approx(3 / 4)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["yes_ratio"] == pytest.approx(4 / 6)


def test_pope_scores_degenerate_answers():
    labels = ["yes", "no", "yes", "no"]
    always_yes = pope_scores(["yes"] * 4, labels)
    assert (always_yes["precision"], always_yes["recall"], always_yes["yes_ratio"]) == (0.5, 1.0, 1.0)
    assert always_yes["f1"] == pytest.approx(2 / 3)
    always_no = pope_scores(["no"] * 4, labels)  # nothing predicted positive: zero, not a crash
    assert (always_no["precision"], always_no["recall"], always_no["f1"], always_no["yes_ratio"]) == (0, 0, 0, 0)
    assert always_no["accuracy"] == 0.5
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        pope_scores(["maybe"], ["yes"])
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        pope_scores(["yes", "no"], ["yes"])


def test_pope_chance():
    assert pope_chance(["yes", "no"]) == {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5,
                                          "yes_ratio": 0.5}
    # positive rate 1/4: a fair coin's precision 1/4, recall 1/2, F1 = 2 (1/4)(1/2) / (3/4) = 1/3
    assert pope_chance(["yes", "no", "no", "no"])["f1"] == pytest.approx(1 / 3)


def test_bleu_hand_computed():
    # hypothesis 5 tokens, reference 6: modified precisions 4/5, 3/4, 2/3, 1/2; brevity penalty
    # exp(1 - 6/5); BLEU = BP * (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = exp(-0.2) * 0.2 ** 0.25
    assert bleu(["a b c d e"], [["a b c d f g"]]) == pytest.approx(100 * math.exp(-0.2) * 0.2 ** 0.25, rel=1e-12)
    assert bleu(["the red circle is here"], [["the red circle is here"]]) == pytest.approx(100.0)
    # a second reference that matches exactly lifts the score to 100 (closest ref length 5)
    assert bleu(["a b c d e"], [["a b c d f g", "a b c d e"]]) == pytest.approx(100.0)


def test_bleu_variable_reference_counts_and_errors():
    two = bleu(["a b c d e", "x y z w v"], [["a b c d e"], ["x y z w v", "q"]])
    assert two == pytest.approx(100.0)
    with pytest.raises(ValueError, match="non-empty list"):
        bleu(["a"], ["a"])  # a bare string is not a list of references
    with pytest.raises(ValueError, match="2 predictions for 1"):
        bleu(["a", "b"], [["a"]])


def test_cider_identical_captions():
    # 2 images, every n-gram in one reference set: idf = log 2 for all. Unigram and bigram
    # vectors equal -> cosine 1; no 3- or 4-grams -> 0. Score = 10 * (1 + 1 + 0 + 0) / 4 = 5.
    mean, per = cider_d(["a b", "c d"], [["a b"], ["c d"]])
    assert per == pytest.approx([5.0, 5.0])
    assert mean == pytest.approx(5.0)


def test_cider_partial_match():
    # image 0: hyp "a b", ref "a c". idf("a") = idf("c") = log 2 - log 1; "b" is in no reference
    # (df 0 -> log max(1, 0) = 0) so its idf is log 2 too. Unigrams: dot = min(l, l) * l for "a"
    # = l^2, norms sqrt(2) l each -> cosine 1/2; bigrams "a b" vs "a c" -> 0; equal lengths.
    # Score = 10 * (1/2) / 4 = 1.25. Image 1: nothing shared -> 0.
    mean, per = cider_d(["a b", "x"], [["a c"], ["d"]])
    assert per == pytest.approx([1.25, 0.0])
    assert mean == pytest.approx(0.625)


def test_cider_clipping_and_length_penalty():
    # image 0: hyp "a a" (tf 2), ref "a" (tf 1), idf log 2 = l. Clipped dot = min(2l, l) * l = l^2;
    # norms 2l and l -> 1/2; length difference 1 -> penalty exp(-1 / (2 * 6^2)) = exp(-1/72).
    # Score 0 = 10 * (1/2) exp(-1/72) / 4. Image 1: "b" vs "b": 10 * 1 / 4 = 2.5.
    mean, per = cider_d(["a a", "b"], [["a"], ["b"]])
    assert per[0] == pytest.approx(1.25 * math.exp(-1 / 72), rel=1e-12)
    assert per[1] == pytest.approx(2.5)
    assert mean == pytest.approx((1.25 * math.exp(-1 / 72) + 2.5) / 2, rel=1e-12)


def test_cider_mean_over_references_and_tokenisation():
    # image 0 has two references: "a b" (the hypothesis after lower-casing and dropping ".":
    # 10 * (1 + 1) / 4 = 5) and "z" (shares nothing: 0); an example scores the mean, 2.5.
    _, per = cider_d(["A b.", "c d"], [["a b", "z"], ["c d"]])
    assert per[0] == pytest.approx(2.5)
    assert per[1] == pytest.approx(5.0)


def test_cider_needs_a_corpus():
    # one image: log N = 0, every tf-idf weight is 0 (as in coco-caption)
    assert cider_d(["a b"], [["a b"]])[0] == 0.0


def test_cider_matches_coco_caption_reference():
    """Agrees with coco-caption's own scorer (pycocoevalcap) on random corpora, when installed."""
    pytest.importorskip("pycocoevalcap")
    import random

    from pycocoevalcap.cider.cider_scorer import CiderScorer

    rng = random.Random(0)
    vocab = "a b c d red blue circle square".split()
    for _ in range(30):
        n = rng.randint(2, 5)
        preds = [" ".join(rng.choice(vocab) for _ in range(rng.randint(2, 6))) for _ in range(n)]
        refs = [[" ".join(rng.choice(vocab) for _ in range(rng.randint(2, 6))) for _ in range(rng.randint(1, 3))]
                for _ in range(n)]
        scorer = CiderScorer(n=4, sigma=6.0)
        for p, r in zip(preds, refs):
            scorer += (p, r)
        want, want_each = scorer.compute_score()
        got, got_each = cider_d(preds, refs)
        assert got == pytest.approx(float(want), abs=1e-12)
        assert got_each == pytest.approx([float(x) for x in want_each], abs=1e-12)


def test_shuffled_baseline_is_a_derangement():
    refs = [["r0", "r0b"], ["r1"], ["r2"]]
    assert shuffled_baseline(refs) == ["r1", "r2", "r0"]
    assert shuffled_baseline([["only"]]) == [""]
