# coding=utf-8
"""GLUE metrics in NumPy, as the GLUE benchmark scores each task.

  CoLA           Matthews correlation coefficient ("mcc")
  SST-2, MNLI(-mm), QNLI, RTE, WNLI   accuracy
  MRPC, QQP      accuracy and F1 of the positive class 1
  STS-B          Pearson and Spearman correlation ("pearson", "spearmanr")

Undefined values: a correlation (Matthews, Pearson, Spearman) whose
denominator is zero, because predictions or labels are constant, is returned
as 0.0 (scikit-learn's convention for Matthews; SciPy would give NaN for
Pearson and Spearman). F1 with no positive label and no positive prediction
is 0.0 (again scikit-learn's convention). Metrics of an empty set raise.
"""

import numpy as np

from adapter_bert.data import glue_processors
from adapter_bert.errors import UserError


def accuracy(predictions, labels):
  """Fraction of predictions equal to the labels."""
  predictions, labels = _pair(predictions, labels)
  return float(np.mean(predictions == labels))


def f1_score(predictions, labels, positive=1):
  """F1 of the class `positive`: 2 tp / (2 tp + fp + fn); 0.0 if undefined."""
  predictions, labels = _pair(predictions, labels)
  predicted = predictions == positive
  actual = labels == positive
  tp = np.sum(predicted & actual)
  fp = np.sum(predicted & ~actual)
  fn = np.sum(~predicted & actual)
  denominator = 2 * tp + fp + fn
  return float(2 * tp / denominator) if denominator else 0.0


def matthews_corrcoef(predictions, labels):
  """Matthews correlation coefficient, multi-class form (R_K).

  For two classes this is (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)).
  Returns 0.0 when undefined (constant predictions or labels).
  """
  predictions, labels = _pair(predictions, labels)
  classes, encoded = np.unique(np.concatenate([labels, predictions]),
                               return_inverse=True)
  n = len(labels)
  true_ids, pred_ids = encoded[:n], encoded[n:]
  k = len(classes)
  confusion = np.zeros((k, k), dtype=np.float64)
  np.add.at(confusion, (true_ids, pred_ids), 1.0)
  true_counts = confusion.sum(axis=1)
  pred_counts = confusion.sum(axis=0)
  correct = np.trace(confusion)
  total = confusion.sum()
  covariance = correct * total - np.dot(true_counts, pred_counts)
  pred_var = total * total - np.dot(pred_counts, pred_counts)
  true_var = total * total - np.dot(true_counts, true_counts)
  if pred_var == 0 or true_var == 0:
    return 0.0
  return float(covariance / np.sqrt(pred_var * true_var))


def pearson(x, y):
  """Pearson correlation; 0.0 if either input is constant."""
  x, y = _pair(x, y, dtype=np.float64)
  x = x - x.mean()
  y = y - y.mean()
  denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
  if denominator == 0:
    return 0.0
  return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0))


def rankdata(values):
  """Ranks 1..n, ties get the average of their ranks (SciPy's "average")."""
  values = np.asarray(values, dtype=np.float64)
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  # Start of each run of equal values in sorted order.
  new_run = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
  run_id = np.cumsum(new_run) - 1
  starts = np.flatnonzero(new_run)
  ends = np.concatenate([starts[1:], [len(values)]])
  average = (starts + ends + 1) / 2.0  # Mean of ranks starts+1 .. ends.
  ranks = np.empty(len(values), dtype=np.float64)
  ranks[order] = average[run_id]
  return ranks


def spearman(x, y):
  """Spearman rank correlation (average ranks for ties); 0.0 if constant."""
  x, y = _pair(x, y, dtype=np.float64)
  return pearson(rankdata(x), rankdata(y))


def _pair(a, b, dtype=None):
  a = np.asarray(a, dtype=dtype).reshape(-1)
  b = np.asarray(b, dtype=dtype).reshape(-1)
  if a.shape != b.shape:
    raise ValueError("predictions and labels differ in length: %d vs %d"
                     % (a.size, b.size))
  if a.size == 0:
    raise ValueError("no examples to score")
  return a, b


_METRICS = {
    "CoLA": ("mcc",),
    "SST-2": ("accuracy",),
    "MRPC": ("accuracy", "f1"),
    "STS-B": ("pearson", "spearmanr"),
    "QQP": ("accuracy", "f1"),
    "MNLI": ("accuracy",),
    "MNLI-mm": ("accuracy",),
    "QNLI": ("accuracy",),
    "RTE": ("accuracy",),
    "WNLI": ("accuracy",),
}

_FUNCTIONS = {
    "accuracy": accuracy,
    "f1": f1_score,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearmanr": spearman,
}


def metric_names(task_name):
  """The metrics GLUE reports for a task, e.g. ("accuracy", "f1") for MRPC."""
  name = glue_processors.get_processor(task_name).name
  if name not in _METRICS:
    raise UserError("task %s has no labelled data to score (it is "
                    "predict-only)" % name)
  return _METRICS[name]


def compute_metrics(task_name, predictions, labels, is_real_example=None):
  """The GLUE metrics of a task over the real examples.

  Args:
    task_name: a task name accepted by glue_processors.get_processor.
    predictions: class ids [n] (or scores [n, num_classes], reduced by
      argmax); for STS-B predicted scores [n] (or [n, 1]).
    labels: label ids [n] (STS-B: gold scores).
    is_real_example: optional [n] flags; examples with 0 (eval padding) are
      left out.

  Returns:
    dict metric name -> float, e.g. {"accuracy": ..., "f1": ...} for MRPC,
    {"pearson": ..., "spearmanr": ...} for STS-B, {"mcc": ...} for CoLA.

  Raises:
    UserError: for an unknown or predict-only task.
    ValueError: for mismatched lengths or no real example.
  """
  if task_name == "CSV":  # data.user_data: your own labels.
    names, regression = ("accuracy",), False
  else:
    names = metric_names(task_name)
    regression = glue_processors.get_processor(task_name).is_regression
  predictions = np.asarray(predictions)
  labels = np.asarray(labels).reshape(-1)
  if regression:
    predictions = predictions.reshape(-1).astype(np.float64)
    labels = labels.astype(np.float64)
  elif predictions.ndim == 2:
    predictions = np.argmax(predictions, axis=-1)
  predictions = predictions.reshape(-1)
  if is_real_example is not None:
    real = np.asarray(is_real_example).reshape(-1).astype(bool)
    if real.shape != labels.shape:
      raise ValueError("is_real_example has %d entries for %d labels"
                       % (real.size, labels.size))
    if predictions.shape != labels.shape:
      raise ValueError("predictions and labels differ in length: %d vs %d"
                       % (predictions.size, labels.size))
    predictions, labels = predictions[real], labels[real]
  return {name: _FUNCTIONS[name](predictions, labels) for name in names}
