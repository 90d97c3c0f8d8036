from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.classification import multiclass_f1_score

from labelloop.training.classification.evaluate import classification_metrics
from labelloop.training.classification.plots import plot_confusion

LABELS = ["a", "b", "c"]


def test_metrics_on_a_hand_made_example():
    truth = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(truth, pred, LABELS)
    # Rows are truth, columns prediction, in label order.
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["labels"] == LABELS and m["n_samples"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (m["per_class"][k] for k in LABELS)
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((1.0, 2 / 3, 0.8))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    assert (a["support"], b["support"], c["support"]) == (3, 2, 1)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    reference = multiclass_f1_score(torch.tensor(pred), torch.tensor(truth), 3, average="macro")
    assert m["macro_f1"] == pytest.approx(float(reference))


def test_majority_guess_has_high_accuracy_but_low_macro_f1():
    truth = [0] * 18 + [1, 2]
    m = classification_metrics(truth, [0] * 20, LABELS)
    assert m["accuracy"] == pytest.approx(0.9)
    assert m["per_class"]["b"]["precision"] is None  # never predicted
    assert m["per_class"]["b"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((2 * 18 / (2 * 18 + 2)) / 3)


def test_a_class_absent_from_truth_and_prediction_is_left_out_of_the_mean():
    m = classification_metrics([0, 1, 1], [0, 1, 0], LABELS)
    assert m["per_class"]["c"]["f1"] is None and m["per_class"]["c"]["support"] == 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="predictions"):
        classification_metrics([0, 1], [0], LABELS)
    empty = classification_metrics([], [], LABELS)
    assert empty["accuracy"] is None and empty["macro_f1"] is None


def test_confusion_png_is_written_and_shape_checked(tmp_path):
    m = classification_metrics([0, 0, 1, 2], [0, 1, 1, 2], LABELS)
    path = plot_confusion(m["confusion_matrix"], LABELS, tmp_path / "sub" / "cm.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="does not fit"):
        plot_confusion(m["confusion_matrix"], LABELS[:2], tmp_path / "x.png")
