"""GLUE metrics against values computed by hand."""

import math

import numpy as np
import pytest

from adapter_bert.data import glue_metrics
from adapter_bert.errors import UserError


def test_binary_metrics_by_hand():
  predictions = [1, 0, 1, 1, 0]
  labels = [1, 1, 1, 0, 0]
  # tp = 2 (rows 0, 2), fn = 1 (row 1), fp = 1 (row 3), tn = 1 (row 4).
  assert glue_metrics.accuracy(predictions, labels) == pytest.approx(3 / 5)
  assert glue_metrics.f1_score(predictions, labels) == pytest.approx(4 / 6)
  # (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = 1 / sqrt(36).
  assert glue_metrics.matthews_corrcoef(predictions, labels) == (
      pytest.approx(1 / 6))


def test_matthews_extremes_and_undefined():
  assert glue_metrics.matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0]) == 1.0
  assert glue_metrics.matthews_corrcoef([1, 0, 0, 1], [0, 1, 1, 0]) == (
      pytest.approx(-1.0))
  # Constant predictions, or labels of one class only: 0 (undefined).
  assert glue_metrics.matthews_corrcoef([1, 1, 1], [0, 1, 1]) == 0.0
  assert glue_metrics.matthews_corrcoef([0, 1, 1], [1, 1, 1]) == 0.0
  assert glue_metrics.matthews_corrcoef([1, 1], [1, 1]) == 0.0


def test_matthews_multiclass_by_hand():
  labels = [0, 0, 1, 1, 2, 2]
  predictions = [0, 1, 1, 1, 2, 0]
  # correct = 4 of 6; true counts (2, 2, 2); predicted counts (2, 3, 1):
  # (4*6 - 12) / sqrt((36 - 14) * (36 - 12)).
  assert glue_metrics.matthews_corrcoef(predictions, labels) == (
      pytest.approx(12 / math.sqrt(22 * 24)))


def test_f1_degenerate():
  assert glue_metrics.f1_score([0, 0], [0, 0]) == 0.0  # No positives at all.
  assert glue_metrics.f1_score([1, 1], [0, 0]) == 0.0
  assert glue_metrics.f1_score([1, 1, 0], [1, 1, 0]) == 1.0


def test_pearson_and_spearman_by_hand():
  # x - mean = (-1, 0, 1), y - mean = (-7/3, -1/3, 8/3):
  # r = 5 / sqrt(2 * 38/3).
  assert glue_metrics.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(
      5 / math.sqrt(76 / 3))
  # Ties get average ranks: x -> (1, 2.5, 2.5, 4), y -> (1, 3, 2, 4):
  # r = 4.5 / sqrt(4.5 * 5) = sqrt(0.9).
  assert glue_metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(
      math.sqrt(0.9))
  # Monotone but not linear: Spearman 1, Pearson below 1.
  assert glue_metrics.spearman([1, 2, 3, 4], [1, 4, 9, 100]) == (
      pytest.approx(1.0))
  assert glue_metrics.pearson([1, 2, 3, 4], [1, 4, 9, 100]) < 0.9
  assert glue_metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_rankdata_average_ties():
  np.testing.assert_array_equal(glue_metrics.rankdata([3, 1, 2, 2, 5, 1]),
                                [5, 1.5, 3.5, 3.5, 6, 1.5])
  np.testing.assert_array_equal(glue_metrics.rankdata([7, 7, 7]), [2, 2, 2])


def test_constant_inputs_give_zero_not_nan():
  assert glue_metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0
  assert glue_metrics.pearson([1, 2, 3], [2.5, 2.5, 2.5]) == 0.0
  assert glue_metrics.spearman([4, 4, 4], [1, 2, 3]) == 0.0
  assert glue_metrics.spearman([1, 2], [1, 2]) == pytest.approx(1.0)


def test_compute_metrics_per_task():
  predictions = np.array([1, 0, 1, 1, 0])
  labels = np.array([1, 1, 1, 0, 0])
  for task in ("MRPC", "qqp"):
    assert glue_metrics.compute_metrics(task, predictions, labels) == (
        pytest.approx({"accuracy": 0.6, "f1": 4 / 6}))
  assert glue_metrics.compute_metrics("cola", predictions, labels) == (
      pytest.approx({"mcc": 1 / 6}))
  for task in ("sst-2", "mnli", "mnli-mm", "qnli", "rte", "wnli"):
    assert glue_metrics.compute_metrics(task, predictions, labels) == (
        pytest.approx({"accuracy": 0.6}))
  scores = glue_metrics.compute_metrics("sts-b", [[1.0], [2.0], [2.0], [3.0]],
                                        [1.0, 3.0, 2.0, 4.0])
  assert scores == pytest.approx({
      "pearson": glue_metrics.pearson([1, 2, 2, 3], [1, 3, 2, 4]),
      "spearmanr": math.sqrt(0.9)})


def test_compute_metrics_counts_real_examples_only():
  predictions = np.array([1, 0, 1, 1, 0, 1, 1])
  labels = np.array([1, 1, 1, 0, 0, 0, 0])
  real = np.array([1, 1, 1, 1, 1, 0, 0])
  assert glue_metrics.compute_metrics("mrpc", predictions, labels, real) == (
      pytest.approx({"accuracy": 0.6, "f1": 4 / 6}))
  # Scores [n, classes] are reduced with argmax.
  probabilities = np.eye(3)[[2, 0, 1, 1]]
  assert glue_metrics.compute_metrics(
      "mnli", probabilities, [2, 0, 1, 0], [1, 1, 1, 0]) == {"accuracy": 1.0}
  with pytest.raises(ValueError, match="no examples"):
    glue_metrics.compute_metrics("rte", [1], [1], [0])
  with pytest.raises(ValueError, match="differ in length"):
    glue_metrics.compute_metrics("rte", [1, 0], [1, 0, 1])


def test_predict_only_and_unknown_tasks():
  with pytest.raises(UserError, match="AX has no labelled data"):
    glue_metrics.compute_metrics("ax", [0], [0])
  with pytest.raises(UserError, match="unknown"):
    glue_metrics.compute_metrics("squad", [0], [0])
  assert glue_metrics.metric_names("STS-B") == ("pearson", "spearmanr")
