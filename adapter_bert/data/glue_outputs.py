# coding=utf-8
"""Prediction files: test_results.tsv and the GLUE server's submission files.

`test_results.tsv` is what google-research/bert's run_classifier.py writes:
one line per real test example with the tab-separated class probabilities
(for STS-B, the predicted score).

The submission file is what gluebenchmark.com expects for each task, named
CoLA.tsv, SST-2.tsv, MRPC.tsv, STS-B.tsv, QQP.tsv, MNLI-m.tsv, MNLI-mm.tsv,
QNLI.tsv, RTE.tsv, WNLI.tsv or AX.tsv: a header `index<TAB>prediction`, then
one line per test example with its GLUE index and the predicted label as the
task's data files spell it (0/1 for CoLA, SST-2, MRPC, QQP and WNLI;
entailment/neutral/contradiction for MNLI and AX; entailment/not_entailment
for QNLI and RTE), or for STS-B the score clipped to [0, 5].

All files are written atomically.
"""

import os

import numpy as np

from adapter_bert.data import glue_processors
from adapter_bert.storage.atomic_io import atomic_open

STSB_MIN_SCORE = 0.0
STSB_MAX_SCORE = 5.0


def write_test_results(path, probabilities, is_real_example=None):
  """Writes test_results.tsv as the original run_classifier.py does.

  Args:
    path: destination file.
    probabilities: [n, num_classes] class probabilities, or [n] (or [n, 1])
      scores for regression.
    is_real_example: optional [n] flags; rows with 0 are left out.

  Returns:
    Number of lines written.
  """
  values = np.asarray(probabilities)
  if values.ndim == 1:
    values = values[:, None]
  if is_real_example is not None:
    values = values[np.asarray(is_real_example).reshape(-1).astype(bool)]
  with atomic_open(path, "w") as f:
    for row in values:
      f.write("\t".join(str(value) for value in row) + "\n")
  return len(values)


def submission_lines(task_name, indices, predictions):
  """The lines of a GLUE submission file (header included).

  Args:
    task_name: a task name accepted by glue_processors.get_processor.
    indices: the GLUE index of each test example.
    predictions: class ids [n] (or probabilities [n, num_classes]); for
      STS-B predicted scores [n] (or [n, 1]).

  Returns:
    List of lines without line ends.
  """
  processor = glue_processors.get_processor(task_name)
  predictions = np.asarray(predictions)
  if len(indices) != len(predictions):
    raise ValueError("%d indices for %d predictions"
                     % (len(indices), len(predictions)))
  lines = ["index\tprediction"]
  if processor.is_regression:
    scores = np.clip(predictions.reshape(len(indices)).astype(np.float64),
                     STSB_MIN_SCORE, STSB_MAX_SCORE)
    for index, score in zip(indices, scores):
      lines.append("%s\t%.3f" % (index, score))
    return lines
  labels = processor.get_labels()
  if predictions.ndim == 2:
    predictions = np.argmax(predictions, axis=-1)
  for index, label_id in zip(indices, predictions.reshape(-1)):
    label_id = int(label_id)
    if not 0 <= label_id < len(labels):
      raise ValueError("predicted class %d is not a %s class"
                       % (label_id, processor.name))
    lines.append("%s\t%s" % (index, labels[label_id]))
  return lines


def submission_path(output_dir, task_name):
  """Path of a task's submission file in `output_dir`."""
  return os.path.join(output_dir,
                      glue_processors.get_processor(task_name).submission_file)


def write_submission(output_dir, task_name, indices, predictions):
  """Writes the GLUE submission file of a task into `output_dir`.

  Args:
    output_dir: folder to write into.
    task_name: a task name accepted by glue_processors.get_processor.
    indices: the GLUE index of each test example (InputExample.index).
    predictions: see `submission_lines`.

  Returns:
    The path written, e.g. <output_dir>/MRPC.tsv.
  """
  path = submission_path(output_dir, task_name)
  lines = submission_lines(task_name, indices, predictions)
  with atomic_open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path
