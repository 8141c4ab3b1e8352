"""test_results.tsv and the GLUE submission files."""

import os

import numpy as np
import pytest

from adapter_bert.data import glue_outputs


def test_test_results_one_line_per_real_example(tmp_path):
  path = str(tmp_path / "test_results.tsv")
  probabilities = np.array([[0.1, 0.9], [0.75, 0.25], [0.5, 0.5]],
                           dtype=np.float32)
  assert glue_outputs.write_test_results(path, probabilities,
                                         is_real_example=[1, 1, 0]) == 2
  assert open(path, encoding="utf-8").read() == "0.1\t0.9\n0.75\t0.25\n"
  three = np.array([[0.2, 0.3, 0.5]])
  glue_outputs.write_test_results(path, three)
  assert open(path, encoding="utf-8").read() == "0.2\t0.3\t0.5\n"
  # STS-B: the score, one per line.
  glue_outputs.write_test_results(path, np.array([3.5, 0.25]))
  assert open(path, encoding="utf-8").read() == "3.5\n0.25\n"
  assert os.listdir(tmp_path) == ["test_results.tsv"]


@pytest.mark.parametrize("task,file_name,predictions,expected", [
    ("cola", "CoLA.tsv", [1, 0, 1], ["1", "0", "1"]),
    ("sst-2", "SST-2.tsv", [0, 1, 1], ["0", "1", "1"]),
    ("mrpc", "MRPC.tsv", [1, 1, 0], ["1", "1", "0"]),
    ("qqp", "QQP.tsv", [0, 0, 1], ["0", "0", "1"]),
    ("wnli", "WNLI.tsv", [1, 0, 0], ["1", "0", "0"]),
    ("mnli", "MNLI-m.tsv", [0, 1, 2],
     ["contradiction", "entailment", "neutral"]),
    ("mnli-mm", "MNLI-mm.tsv", [2, 2, 0],
     ["neutral", "neutral", "contradiction"]),
    ("ax", "AX.tsv", [1, 0, 2], ["entailment", "contradiction", "neutral"]),
    ("qnli", "QNLI.tsv", [0, 1, 0],
     ["entailment", "not_entailment", "entailment"]),
    ("rte", "RTE.tsv", [1, 1, 0],
     ["not_entailment", "not_entailment", "entailment"]),
    ("sts-b", "STS-B.tsv", [-0.5, 2.3456, 7.0], ["0.000", "2.346", "5.000"]),
])
def test_submission_file_per_task(tmp_path, task, file_name, predictions,
                                  expected):
  indices = ["0", "1", "2"]
  path = glue_outputs.write_submission(str(tmp_path), task, indices,
                                       predictions)
  assert path == str(tmp_path / file_name)
  lines = open(path, encoding="utf-8").read().split("\n")
  assert lines[0] == "index\tprediction"
  assert lines[1:] == ["%s\t%s" % (i, p) for i, p in zip(indices, expected)
                      ] + [""]
  assert os.listdir(tmp_path) == [file_name]


def test_submission_from_probabilities_and_custom_indices(tmp_path):
  probabilities = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
  path = glue_outputs.write_submission(str(tmp_path), "MNLI", [17, 42],
                                       probabilities)
  assert open(path, encoding="utf-8").read() == (
      "index\tprediction\n17\tentailment\n42\tcontradiction\n")
  # Rewriting replaces the file.
  glue_outputs.write_submission(str(tmp_path), "MNLI", [5], [2])
  assert open(path, encoding="utf-8").read() == (
      "index\tprediction\n5\tneutral\n")
  path = glue_outputs.write_submission(str(tmp_path), "stsb", [3],
                                       np.array([[4.25]]))
  assert open(path, encoding="utf-8").read() == "index\tprediction\n3\t4.250\n"


def test_submission_rejects_bad_predictions(tmp_path):
  with pytest.raises(ValueError, match="not a RTE class"):
    glue_outputs.write_submission(str(tmp_path), "rte", ["0"], [2])
  with pytest.raises(ValueError, match="2 indices for 1 predictions"):
    glue_outputs.write_submission(str(tmp_path), "rte", ["0", "1"], [1])
  assert os.listdir(tmp_path) == []
