"""Metric functions: hand-computed cases, and entity scores equal to seqeval's on random tag sequences."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bertflow.bert_core.finetune.metrics import classification_report, confusion_matrix, entity_report, get_entities


def test_classification_report_matches_hand_computation():
    names = ["a", "b", "c"]
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    rep = classification_report(y_true, y_pred, names)
    assert rep["accuracy"] == pytest.approx(4 / 6)
    # a: P 2/2 R 2/3 F 0.8 | b: P 1/2 R 1/2 F 0.5 | c: P 1/2 R 1/1 F 2/3
    pc = rep["per_class"]
    assert (pc["a"]["precision"], pc["a"]["recall"], pc["a"]["f1"]) == pytest.approx((1.0, 2 / 3, 0.8))
    assert (pc["b"]["precision"], pc["b"]["recall"], pc["b"]["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (pc["c"]["precision"], pc["c"]["recall"], pc["c"]["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    assert [pc[n]["support"] for n in names] == [3, 2, 1]
    assert rep["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert rep["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_macro_f1_skips_classes_absent_from_gold_and_predictions():
    """As scikit-learn: a class nobody used does not drag the macro average to zero."""
    rep = classification_report([0, 1, 0, 1], [0, 1, 0, 0], ["x", "y", "unused"])
    f_x = 2 * (2 / 3 * 1.0) / (2 / 3 + 1.0)
    f_y = 2 * (1.0 * 0.5) / 1.5
    assert rep["macro_f1"] == pytest.approx((f_x + f_y) / 2)
    assert rep["per_class"]["unused"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_classification_report_vs_sklearn_on_random_labels():
    from sklearn import metrics as sk  # installed with mlflow and seqeval
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = int(rng.integers(2, 7))
        y_true = rng.integers(0, k, size=int(rng.integers(1, 60)))
        y_pred = np.where(rng.random(len(y_true)) < 0.6, y_true, rng.integers(0, k, size=len(y_true)))
        rep = classification_report(y_true, y_pred, [str(i) for i in range(k)])
        assert rep["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert rep["macro_f1"] == pytest.approx(sk.f1_score(y_true, y_pred, average="macro", zero_division=0))
        assert np.array_equal(confusion_matrix(y_true, y_pred, k), sk.confusion_matrix(y_true, y_pred, labels=range(k)))


def test_entities_by_hand_conll_rules():
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    # conlleval: an I- after O (or after another type) starts a new entity
    assert get_entities(["O", "I-PER", "I-PER", "I-LOC"]) == [("PER", 1, 2), ("LOC", 3, 3)]
    assert get_entities(["B-PER", "B-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]
    # sentences are joined with an O, so nothing spans a sentence break and offsets are global
    assert get_entities([["B-ORG", "I-ORG"], ["I-ORG"]]) == [("ORG", 0, 1), ("ORG", 3, 3)]


def test_entity_report_by_hand():
    y_true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    y_pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-LOC"]]
    rep = entity_report(y_true, y_pred)
    # gold: PER(0-1) LOC(3) ORG(5); pred: PER(0-1) ORG(3) ORG(5) LOC(6); correct: PER, ORG(5)
    assert rep["precision"] == pytest.approx(2 / 4)
    assert rep["recall"] == pytest.approx(2 / 3)
    assert rep["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert rep["token_accuracy"] == pytest.approx(4 / 6)
    assert rep["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert rep["per_type"]["ORG"]["precision"] == pytest.approx(0.5)
    assert rep["per_type"]["ORG"]["recall"] == pytest.approx(1.0)


def test_entity_report_with_no_entities_is_zero_not_an_error():
    rep = entity_report([["O", "O"]], [["O", "O"]])
    assert (rep["precision"], rep["recall"], rep["f1"], rep["token_accuracy"]) == (0.0, 0.0, 0.0, 1.0)


def test_entity_scores_equal_seqeval_on_random_sequences():
    """Random, often ill-formed, BIO (and some IOBES) sequences: every figure equals seqeval's."""
    from seqeval import metrics as seqeval
    rng = np.random.default_rng(1)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "E-PER", "S-LOC"]
    for trial in range(300):
        n_sent = int(rng.integers(1, 5))
        y_true, y_pred = [], []
        for _ in range(n_sent):
            length = int(rng.integers(0 if trial % 7 else 1, 9))
            t = list(rng.choice(tags, size=length))
            p = [x if rng.random() < 0.6 else str(rng.choice(tags)) for x in t]
            y_true.append([str(x) for x in t])
            y_pred.append(p)
        if not any(y_true):
            continue
        ours = entity_report(y_true, y_pred)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert ours["precision"] == pytest.approx(seqeval.precision_score(y_true, y_pred)), (y_true, y_pred)
            assert ours["recall"] == pytest.approx(seqeval.recall_score(y_true, y_pred)), (y_true, y_pred)
            assert ours["f1"] == pytest.approx(seqeval.f1_score(y_true, y_pred)), (y_true, y_pred)
            assert ours["token_accuracy"] == pytest.approx(seqeval.accuracy_score(y_true, y_pred))
            report = seqeval.classification_report(y_true, y_pred, output_dict=True, zero_division=0)
        for type_, figures in ours["per_type"].items():
            assert figures["f1"] == pytest.approx(report[type_]["f1-score"]), type_
            assert figures["support"] == report[type_]["support"]


def test_get_entities_equals_seqeval_on_random_flat_sequences():
    from seqeval.metrics.sequence_labeling import get_entities as seqeval_entities

    rng = np.random.default_rng(2)
    tags = ["O", "B-A", "I-A", "B-B", "I-B", "E-A", "S-B", "B", "I"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(500):
            seq = [str(x) for x in rng.choice(tags, size=int(rng.integers(0, 12)))]
            assert get_entities(seq) == seqeval_entities(seq), seq


def test_piece_level_figures_split_a_word_whose_pieces_disagree():
    """Per word the first piece decides (right here); per piece a disagreeing later piece splits the entity."""
    import numpy as np

    from bertflow.bert_core.finetune.evaluate import evaluate
    from bertflow.bert_core.finetune.examples import TaggedExamples
    from bertflow.bert_core.finetune.infer import TokenOutputs

    names = ["B-LOC", "B-ORG", "I-LOC", "I-ORG", "O"]
    ids = {n: i for i, n in enumerate(names)}
    words = [["Kansai", "Electric", "rose"]]  # pieces: kan ##sai electric rose
    examples = TaggedExamples(words, [["B-ORG", "I-ORG", "O"]])
    outputs = TokenOutputs(
        pred=[np.array([ids["B-ORG"], ids["I-ORG"], ids["O"]])], score=[np.ones(3, np.float32)],
        piece_gold=[np.array([ids[t] for t in ("B-ORG", "I-ORG", "I-ORG", "O")])],
        piece_pred=[np.array([ids[t] for t in ("B-ORG", "I-LOC", "I-ORG", "O")])])
    per_word = evaluate(examples, outputs, names).metrics
    assert per_word["entity_f1"] == 1.0 and "piece_entity_f1" not in per_word
    both = evaluate(examples, outputs, names, piece_level=True).metrics
    assert both["entity_f1"] == 1.0
    # pieces: ORG(kan) LOC(##sai) ORG(electric) against gold ORG(kan..electric): nothing right
    assert (both["piece_entity_precision"], both["piece_entity_recall"], both["piece_entity_f1"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="labelled pieces"):
        evaluate(examples, TokenOutputs(outputs.pred, outputs.score), names, piece_level=True)
