# coding=utf-8
"""GLUE data processors: the task files, read into `InputExample`s.

Each processor reads its task's files exactly as the GLUE download script
(download_glue_data.py) writes them under `glue_data/<TASK>/`: UTF-8 (an
optional byte order mark is skipped), one row per line, fields separated by
tabs, no quoting (a `"` is an ordinary character, as with
`csv.reader(f, delimiter="\\t", quotechar=None)` in google-research/bert).

Every row is checked: a wrong number of columns, a label outside the task's
label set, an empty text or a non-numeric STS-B score raises `UserError` with
the file and line number. Test rows get a placeholder label (the first label,
or 0.0 for STS-B) and keep the GLUE `index` column in `InputExample.index`,
which the submission file needs.

Without a `data_dir`, the same examples come from tensorflow-datasets
(`tfds.load("glue/<config>")`), which downloads GLUE on first use.
"""

import dataclasses
import math
import os
from typing import Optional, Union

from adapter_bert.errors import UserError

TRAIN = "train"
DEV = "dev"
TEST = "test"
SPLITS = (TRAIN, DEV, TEST)


@dataclasses.dataclass(frozen=True)
class InputExample:
  """A single example of a GLUE task.

  Attributes:
    guid: unique id, "<set>-<n>" as in google-research/bert ("train-1", ...).
    text_a: the first sequence (the only one for single-sentence tasks).
    text_b: the second sequence of pair tasks, else None.
    label: a label string of the task's label list, or a float score for
      STS-B. Test examples carry a placeholder.
    index: the GLUE `index` (or QQP `id`) of a test row, as written in the
      submission file; None for train and dev examples.
  """
  guid: str
  text_a: str
  text_b: Optional[str] = None
  label: Union[str, float, None] = None
  index: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class FileLayout:
  """Where the fields of one GLUE file are.

  Attributes:
    file_name: file inside the task folder, e.g. "train.tsv".
    has_header: whether the first line is a header.
    num_columns: number of tab-separated fields of every line.
    text_a: column of the first text.
    text_b: column of the second text (pair tasks), else None.
    label: column of the label (None in test files); may be negative.
    index: column of the GLUE index (test files), else None.
    guid: column used for the guid instead of the line number (MNLI), else
      None.
  """
  file_name: str
  has_header: bool
  num_columns: int
  text_a: int
  text_b: Optional[int] = None
  label: Optional[int] = None
  index: Optional[int] = None
  guid: Optional[int] = None


class DataProcessor(object):
  """Reads one GLUE task. Subclasses fill in the class attributes below.

  Attributes:
    name: canonical task name, e.g. "MRPC" (what `get_processor` returns it
      for, and what the metrics and submission code key on).
    task_dir: folder of the task in the glue_data layout.
    labels: the label strings, in label-id order; None for regression.
    is_regression: True for STS-B (a float score instead of a class).
    submission_file: name of the file the GLUE server expects.
    layouts: FileLayout per split ("train", "dev", "test"); a missing split is
      not available for this task.
    guid_prefixes: the guid prefix per split (default: the split name).
    tfds_splits: (tfds config, tfds split) per split.
    tfds_text_features: names of the text_a (and text_b) features in tfds.
    tfds_labels: our label for each tfds ClassLabel id.
  """
  name = None
  task_dir = None
  labels = None
  is_regression = False
  submission_file = None
  layouts = {}
  guid_prefixes = {}
  tfds_splits = {}
  tfds_text_features = ()
  tfds_labels = None

  # --- The interface of google-research/bert's processors. ---

  def get_train_examples(self, data_dir, tfds_data_dir=None):
    """Training examples (from `data_dir`, or tensorflow-datasets if None)."""
    return self.get_examples(TRAIN, data_dir, tfds_data_dir)

  def get_dev_examples(self, data_dir, tfds_data_dir=None):
    """Dev (validation) examples."""
    return self.get_examples(DEV, data_dir, tfds_data_dir)

  def get_test_examples(self, data_dir, tfds_data_dir=None):
    """Test examples: placeholder labels, GLUE indices in `.index`."""
    return self.get_examples(TEST, data_dir, tfds_data_dir)

  def get_labels(self):
    """The label strings in id order ([] would be wrong: None for STS-B)."""
    return list(self.labels) if self.labels is not None else None

  @property
  def num_labels(self):
    """Number of model outputs: 1 for regression, else the label count."""
    return 1 if self.is_regression else len(self.labels)

  @property
  def placeholder_label(self):
    """The label given to test examples (which have none)."""
    return 0.0 if self.is_regression else self.labels[0]

  # --- Reading. ---

  def get_examples(self, split, data_dir=None, tfds_data_dir=None):
    """Reads one split.

    Args:
      split: "train", "dev" or "test".
      data_dir: the task folder of glue_data (e.g. glue_data/MRPC), or the
        glue_data folder itself; None (or "") loads the split with
        tensorflow-datasets instead.
      tfds_data_dir: where tensorflow-datasets keeps its data (None: its
        default, ~/tensorflow_datasets).

    Returns:
      A list of InputExample, in file order.

    Raises:
      UserError: for a split the task does not have, a missing file, a
        malformed row, or (tfds) a dataset that cannot be loaded.
    """
    self._check_split(split)
    if not data_dir:
      return self._tfds_examples(split, tfds_data_dir)
    path = self.data_file(split, data_dir)
    return self._read_examples(split, path)

  def data_file(self, split, data_dir):
    """The file that holds `split` under `data_dir` (checked to exist).

    `data_dir` may be the task folder (as google-research/bert expects) or
    the glue_data folder that contains it.

    Raises:
      UserError: if the file is in neither place.
    """
    self._check_split(split)
    file_name = self.layouts[split].file_name
    direct = os.path.join(data_dir, file_name)
    nested = os.path.join(data_dir, self.task_dir, file_name)
    if os.path.isfile(direct):
      return direct
    if os.path.isfile(nested):
      return nested
    if not os.path.isdir(data_dir):
      raise UserError("--data_dir=%s does not exist or is not a folder"
                      % data_dir)
    raise UserError(
        "%s %s file not found: %s (pass --data_dir=<glue_data>/%s, the folder "
        "written by the GLUE download script)"
        % (self.name, split, direct, self.task_dir))

  def _check_split(self, split):
    if split not in SPLITS:
      raise ValueError("split must be one of %s, got %r" % (SPLITS, split))
    if split not in self.layouts:
      raise UserError("task %s has no %s set (it is for %s only)"
                      % (self.name, split, " and ".join(
                          s for s in SPLITS if s in self.layouts)))

  def _read_examples(self, split, path):
    layout = self.layouts[split]
    prefix = self.guid_prefixes.get(split, split)
    examples = []
    for line_index, fields in _read_tsv_rows(path, layout):
      where = "%s line %d" % (path, line_index + 1)
      text_a = _text(fields[layout.text_a], where, layout.text_a)
      text_b = None
      if layout.text_b is not None:
        text_b = _text(fields[layout.text_b], where, layout.text_b)
      if layout.label is None:
        label = self.placeholder_label
      else:
        label = self._parse_label(fields[layout.label], where)
      index = fields[layout.index] if layout.index is not None else None
      guid_part = (fields[layout.guid] if layout.guid is not None
                   else str(line_index))
      examples.append(InputExample(guid="%s-%s" % (prefix, guid_part),
                                   text_a=text_a, text_b=text_b, label=label,
                                   index=index))
    return examples

  def _parse_label(self, raw, where):
    if self.is_regression:
      try:
        score = float(raw)
      except ValueError:
        score = math.nan
      if not math.isfinite(score):
        raise UserError("%s: score %r is not a number" % (where, raw))
      return score
    if raw not in self.labels:
      raise UserError("%s: label %r is not one of the %s labels %s"
                      % (where, raw, self.name, ", ".join(self.labels)))
    return raw

  # --- tensorflow-datasets. ---

  def _tfds_examples(self, split, tfds_data_dir):
    """Loads `split` from tensorflow-datasets as InputExamples."""
    config, tfds_split = self.tfds_splits[split]
    rows, label_names = _tfds_rows("glue/" + config, tfds_split, tfds_data_dir,
                                   self.name)
    if not self.is_regression and len(label_names) != len(self.tfds_labels):
      raise UserError(
          "tensorflow-datasets glue/%s has labels %s, expected %d classes; "
          "pass --data_dir with the glue_data files instead"
          % (config, label_names, len(self.tfds_labels)))
    prefix = self.guid_prefixes.get(split, split)
    where_fmt = "tensorflow-datasets glue/%s %s example idx %%d" % (
        config, tfds_split)
    examples = []
    for row in sorted(rows, key=lambda r: int(r["idx"])):
      idx = int(row["idx"])
      where = where_fmt % idx
      texts = [_text(_decode(row[feature]), where, feature)
               for feature in self.tfds_text_features]
      if split == TEST:
        label = self.placeholder_label
      elif self.is_regression:
        label = self._parse_label(str(row["label"]), where)
      else:
        label_id = int(row["label"])
        if not 0 <= label_id < len(self.tfds_labels):
          raise UserError("%s: label id %d is not a %s class"
                          % (where, label_id, self.name))
        label = self.tfds_labels[label_id]
      examples.append(InputExample(
          guid="%s-%d" % (prefix, idx), text_a=texts[0],
          text_b=texts[1] if len(texts) > 1 else None, label=label,
          index=str(idx) if split == TEST else None))
    return examples


def _decode(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _text(value, where, column):
  if not value.strip():
    raise UserError("%s: empty text in column %s" % (where, column))
  return value


def _read_tsv_rows(path, layout):
  """Yields (0-based line index, fields) of the data rows of a GLUE file.

  Splits lines on "\\n" only (a trailing "\\r" is dropped) and fields on tabs
  only, without any quote handling. Blank lines at the end of the file are
  ignored; any other line must have `layout.num_columns` fields.

  Raises:
    UserError: missing file, invalid UTF-8, or a wrong number of columns.
  """
  try:
    f = open(path, "rb")
  except OSError as e:
    raise UserError("cannot read %s: %s" % (path, e.strerror or e)) from None
  with f:
    pending_blank = []
    seen_header = False
    for line_index, raw in enumerate(f):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise UserError("%s line %d: not valid UTF-8 (%s)"
                        % (path, line_index + 1, e.reason)) from None
      if line_index == 0 and line.startswith("\ufeff"):
        line = line[1:]
      if line.endswith("\n"):
        line = line[:-1]
      if line.endswith("\r"):
        line = line[:-1]
      if not line:
        pending_blank.append(line_index)
        continue
      if pending_blank:
        raise UserError("%s line %d: empty line (expected %d tab-separated "
                        "columns)" % (path, pending_blank[0] + 1,
                                      layout.num_columns))
      fields = line.split("\t")
      if len(fields) != layout.num_columns:
        what = "header" if (layout.has_header and line_index == 0) else "row"
        raise UserError(
            "%s line %d: %s has %d tab-separated columns, expected %d for "
            "this file" % (path, line_index + 1, what, len(fields),
                           layout.num_columns))
      if layout.has_header and line_index == 0:
        seen_header = True
        continue
      yield line_index, fields
    if layout.has_header and not seen_header:
      raise UserError("%s is empty (expected a header line)" % path)


def load_tfds(name, split, tfds_data_dir, way_out):
  """All rows of a tensorflow-datasets split, as dicts of NumPy values.

  Args:
    name, split: the dataset (e.g. "glue/mrpc", "conll2003") and split.
    tfds_data_dir: where tensorflow-datasets keeps its data (None: its
      default).
    way_out: what the user can do instead, e.g. "--data_dir=<glue_data>/MRPC".

  Returns:
    (rows, info).

  Raises:
    UserError: if tensorflow-datasets cannot provide the split (typically no
      internet access to download it), naming `way_out`.
  """
  import tensorflow_datasets as tfds  # Only needed without --data_dir.
  try:
    dataset, info = tfds.load(name, split=split, data_dir=tfds_data_dir,
                              with_info=True, shuffle_files=False)
    rows = list(tfds.as_numpy(dataset))
  except Exception as e:  # pylint: disable=broad-except
    # Download and preparation fail in many ways (no network, a moved URL,
    # a missing optional package); all mean the same to the user.
    cause = " ".join(str(e).split())[:300]
    raise UserError(
        "could not load %s split %r with tensorflow-datasets (%s: %s); "
        "without internet access pass %s"
        % (name, split, type(e).__name__, cause, way_out)) from None
  return rows, info


def _tfds_rows(name, split, tfds_data_dir, task_name):
  """(rows, label_names) of a GLUE split; the label names are [] for a
  float label."""
  rows, info = load_tfds(
      name, split, tfds_data_dir,
      "--data_dir=<glue_data>/%s, the folder written by the GLUE download "
      "script" % task_name)
  label_feature = info.features["label"]
  label_names = list(getattr(label_feature, "names", None) or [])
  return rows, label_names


# --- The tasks. --------------------------------------------------------------

_BINARY = ("0", "1")
_MNLI_LABELS = ("contradiction", "entailment", "neutral")
_MNLI_TFDS_LABELS = ("entailment", "neutral", "contradiction")
_NLI2_LABELS = ("entailment", "not_entailment")


def _pair_layouts(num_train_cols, a, b, label, num_test_cols, test_a, test_b,
                  test_index=0):
  return {
      TRAIN: FileLayout("train.tsv", True, num_train_cols, a, b, label),
      DEV: FileLayout("dev.tsv", True, num_train_cols, a, b, label),
      TEST: FileLayout("test.tsv", True, num_test_cols, test_a, test_b,
                       index=test_index),
  }


class ColaProcessor(DataProcessor):
  """CoLA: train/dev have no header (source, label, original mark, text)."""
  name = "CoLA"
  task_dir = "CoLA"
  labels = _BINARY
  submission_file = "CoLA.tsv"
  layouts = {
      TRAIN: FileLayout("train.tsv", False, 4, 3, label=1),
      DEV: FileLayout("dev.tsv", False, 4, 3, label=1),
      TEST: FileLayout("test.tsv", True, 2, 1, index=0),
  }
  tfds_splits = {TRAIN: ("cola", "train"), DEV: ("cola", "validation"),
                 TEST: ("cola", "test")}
  tfds_text_features = ("sentence",)
  tfds_labels = _BINARY  # unacceptable, acceptable


class Sst2Processor(DataProcessor):
  """SST-2: sentence, label / test: index, sentence."""
  name = "SST-2"
  task_dir = "SST-2"
  labels = _BINARY
  submission_file = "SST-2.tsv"
  layouts = {
      TRAIN: FileLayout("train.tsv", True, 2, 0, label=1),
      DEV: FileLayout("dev.tsv", True, 2, 0, label=1),
      TEST: FileLayout("test.tsv", True, 2, 1, index=0),
  }
  tfds_splits = {TRAIN: ("sst2", "train"), DEV: ("sst2", "validation"),
                 TEST: ("sst2", "test")}
  tfds_text_features = ("sentence",)
  tfds_labels = _BINARY  # negative, positive


class MrpcProcessor(DataProcessor):
  """MRPC: Quality, #1 ID, #2 ID, #1 String, #2 String."""
  name = "MRPC"
  task_dir = "MRPC"
  labels = _BINARY
  submission_file = "MRPC.tsv"
  layouts = {
      TRAIN: FileLayout("train.tsv", True, 5, 3, 4, label=0),
      DEV: FileLayout("dev.tsv", True, 5, 3, 4, label=0),
      TEST: FileLayout("test.tsv", True, 5, 3, 4, index=0),
  }
  tfds_splits = {TRAIN: ("mrpc", "train"), DEV: ("mrpc", "validation"),
                 TEST: ("mrpc", "test")}
  tfds_text_features = ("sentence1", "sentence2")
  tfds_labels = _BINARY  # not_equivalent, equivalent


class StsbProcessor(DataProcessor):
  """STS-B: 10 columns, sentences at 7 and 8, the 0-5 score last."""
  name = "STS-B"
  task_dir = "STS-B"
  labels = None
  is_regression = True
  submission_file = "STS-B.tsv"
  layouts = _pair_layouts(10, 7, 8, 9, 9, 7, 8)
  tfds_splits = {TRAIN: ("stsb", "train"), DEV: ("stsb", "validation"),
                 TEST: ("stsb", "test")}
  tfds_text_features = ("sentence1", "sentence2")

  def get_labels(self):
    """STS-B has no classes: the label is a float score."""
    return None


class QqpProcessor(DataProcessor):
  """QQP: id, qid1, qid2, question1, question2, is_duplicate."""
  name = "QQP"
  task_dir = "QQP"
  labels = _BINARY
  submission_file = "QQP.tsv"
  layouts = _pair_layouts(6, 3, 4, 5, 3, 1, 2)
  tfds_splits = {TRAIN: ("qqp", "train"), DEV: ("qqp", "validation"),
                 TEST: ("qqp", "test")}
  tfds_text_features = ("question1", "question2")
  tfds_labels = _BINARY  # not_duplicate, duplicate


class MnliProcessor(DataProcessor):
  """MNLI (matched dev/test): texts at columns 8 and 9, gold label last."""
  name = "MNLI"
  task_dir = "MNLI"
  labels = _MNLI_LABELS
  submission_file = "MNLI-m.tsv"
  layouts = {
      TRAIN: FileLayout("train.tsv", True, 12, 8, 9, label=-1, guid=0),
      DEV: FileLayout("dev_matched.tsv", True, 16, 8, 9, label=-1, guid=0),
      TEST: FileLayout("test_matched.tsv", True, 10, 8, 9, index=0, guid=0),
  }
  guid_prefixes = {DEV: "dev_matched", TEST: "test"}
  tfds_splits = {TRAIN: ("mnli", "train"),
                 DEV: ("mnli", "validation_matched"),
                 TEST: ("mnli", "test_matched")}
  tfds_text_features = ("premise", "hypothesis")
  tfds_labels = _MNLI_TFDS_LABELS


class MnliMismatchedProcessor(MnliProcessor):
  """MNLI with the mismatched dev/test sets (training data is the same)."""
  name = "MNLI-mm"
  submission_file = "MNLI-mm.tsv"
  layouts = {
      TRAIN: MnliProcessor.layouts[TRAIN],
      DEV: FileLayout("dev_mismatched.tsv", True, 16, 8, 9, label=-1, guid=0),
      TEST: FileLayout("test_mismatched.tsv", True, 10, 8, 9, index=0,
                       guid=0),
  }
  guid_prefixes = {DEV: "dev_mismatched", TEST: "test"}
  tfds_splits = {TRAIN: ("mnli", "train"),
                 DEV: ("mnli_mismatched", "validation"),
                 TEST: ("mnli_mismatched", "test")}


class QnliProcessor(DataProcessor):
  """QNLI: index, question, sentence, label."""
  name = "QNLI"
  task_dir = "QNLI"
  labels = _NLI2_LABELS
  submission_file = "QNLI.tsv"
  layouts = _pair_layouts(4, 1, 2, 3, 3, 1, 2)
  tfds_splits = {TRAIN: ("qnli", "train"), DEV: ("qnli", "validation"),
                 TEST: ("qnli", "test")}
  tfds_text_features = ("question", "sentence")
  tfds_labels = _NLI2_LABELS


class RteProcessor(DataProcessor):
  """RTE: index, sentence1, sentence2, label."""
  name = "RTE"
  task_dir = "RTE"
  labels = _NLI2_LABELS
  submission_file = "RTE.tsv"
  layouts = _pair_layouts(4, 1, 2, 3, 3, 1, 2)
  tfds_splits = {TRAIN: ("rte", "train"), DEV: ("rte", "validation"),
                 TEST: ("rte", "test")}
  tfds_text_features = ("sentence1", "sentence2")
  tfds_labels = _NLI2_LABELS


class WnliProcessor(DataProcessor):
  """WNLI: index, sentence1, sentence2, label (0/1)."""
  name = "WNLI"
  task_dir = "WNLI"
  labels = _BINARY
  submission_file = "WNLI.tsv"
  layouts = _pair_layouts(4, 1, 2, 3, 3, 1, 2)
  tfds_splits = {TRAIN: ("wnli", "train"), DEV: ("wnli", "validation"),
                 TEST: ("wnli", "test")}
  tfds_text_features = ("sentence1", "sentence2")
  tfds_labels = _BINARY  # not_entailment, entailment


class AxProcessor(DataProcessor):
  """The GLUE diagnostic set: predict-only, with an MNLI model's labels."""
  name = "AX"
  task_dir = "diagnostic"
  labels = _MNLI_LABELS
  submission_file = "AX.tsv"
  layouts = {TEST: FileLayout("diagnostic.tsv", True, 3, 1, 2, index=0)}
  tfds_splits = {TEST: ("ax", "test")}
  tfds_text_features = ("premise", "hypothesis")
  tfds_labels = _MNLI_TFDS_LABELS


_PROCESSORS = {
    "cola": ColaProcessor,
    "sst-2": Sst2Processor,
    "mrpc": MrpcProcessor,
    "sts-b": StsbProcessor,
    "qqp": QqpProcessor,
    "mnli": MnliProcessor,
    "mnli-mm": MnliMismatchedProcessor,
    "qnli": QnliProcessor,
    "rte": RteProcessor,
    "wnli": WnliProcessor,
    "ax": AxProcessor,
}

_ALIASES = {
    "sst2": "sst-2",
    "stsb": "sts-b",
    "mnli-m": "mnli",
    "mnli_matched": "mnli",
    "mnli_mismatched": "mnli-mm",
    "diagnostic": "ax",
}


def task_names():
  """The accepted task names (lower case, aliases excluded)."""
  return list(_PROCESSORS)


def get_processor(task_name):
  """Returns the processor of a GLUE task.

  Args:
    task_name: case-insensitive name: cola, sst-2 (sst2), mrpc, sts-b (stsb),
      qqp, mnli, mnli-mm, qnli, rte, wnli, ax.

  Raises:
    UserError: for an unknown name, listing the valid ones.
  """
  key = str(task_name).strip().lower()
  key = _ALIASES.get(key, key)
  if key not in _PROCESSORS:
    raise UserError("unknown --task_name=%s; valid names: %s"
                    % (task_name, ", ".join(_PROCESSORS)))
  return _PROCESSORS[key]()
