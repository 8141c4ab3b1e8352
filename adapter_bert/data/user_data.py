"""Your own data for classification: CSV, TSV or JSON Lines with named
columns (`--task_name=csv`).

`--data_dir` holds `train`, `dev` and optionally `test` files, each
`.csv`, `.tsv` or `.jsonl` (the first found in that order); CSV and TSV
have a header row naming the columns, JSON Lines one object per line.
`--text_a_column` (and `--text_b_column` for pairs) name the texts,
`--label_column` the label; the labels are those of the training file,
sorted. Rows are checked as strictly as the GLUE files': a missing column,
an empty text, a malformed line or a dev label the training file lacks is
one error naming the file and line.
"""

import csv
import json
import os
import sys

from adapter_bert.data import glue_processors
from adapter_bert.errors import UserError
from adapter_bert.errors import clip_value

NAME = "CSV"
EXTENSIONS = (".csv", ".tsv", ".jsonl")


class TableProcessor(glue_processors.DataProcessor):
  """A processor of named-column files (see the module docstring)."""

  name = NAME
  task_dir = ""
  is_regression = False

  def __init__(self, text_a_column, text_b_column=None, label_column="label",
               data_dir=None):
    if not text_a_column:
      raise UserError("--task_name=csv needs --text_a_column (and "
                      "--label_column, --text_b_column for pairs)")
    self.text_a_column = text_a_column
    self.text_b_column = text_b_column or None
    self.label_column = label_column
    self.data_dir = data_dir
    self.layouts = {split: None for split in glue_processors.SPLITS}
    self.labels = None
    # What the features depend on beyond the file: which columns.
    self.cache_identity = "%s:%s|%s|%s" % (NAME, text_a_column,
                                            text_b_column or "",
                                            label_column)

  def data_file(self, split, data_dir):
    stem = {"train": "train", "dev": "dev", "test": "test"}[split]
    for ext in EXTENSIONS:
      path = os.path.join(data_dir, stem + ext)
      if os.path.isfile(path):
        return path
    if not os.path.isdir(data_dir):
      raise UserError("--data_dir=%s does not exist or is not a folder"
                      % data_dir)
    raise UserError("%s %s file not found in %s (expected %s)"
                    % (NAME, split, data_dir, ", ".join(
                        stem + e for e in EXTENSIONS)))

  def get_labels(self):
    if self.labels is None:
      if not self.data_dir:
        raise UserError("--task_name=csv needs --data_dir")
      rows = _rows(self.data_file("train", self.data_dir))
      labels = set()
      for where, row in rows:
        labels.add(self._field(row, self.label_column, where))
      self.labels = sorted(labels)
      if len(self.labels) < 2:
        raise UserError("%s: the training file has %d label(s) in column %r;"
                        " classification needs two or more"
                        % (self.data_file("train", self.data_dir),
                           len(self.labels), self.label_column))
    return list(self.labels)

  @property
  def num_labels(self):
    return len(self.get_labels())

  @property
  def placeholder_label(self):
    return self.get_labels()[0]

  def get_examples(self, split, data_dir=None, tfds_data_dir=None):
    del tfds_data_dir
    data_dir = data_dir or self.data_dir
    if not data_dir:
      raise UserError("--task_name=csv needs --data_dir")
    self.data_dir = data_dir
    labels = set(self.get_labels())
    path = self.data_file(split, data_dir)
    examples = []
    has_labels = None
    for i, (where, row) in enumerate(_rows(path)):
      text_a = self._field(row, self.text_a_column, where)
      text_b = (self._field(row, self.text_b_column, where)
                if self.text_b_column else None)
      if has_labels is None:
        has_labels = split != "test" or self.label_column in row
      if has_labels:
        label = self._field(row, self.label_column, where)
        if label not in labels:
          raise UserError("%s: label %r is not one of the training file's "
                          "labels %s" % (where, label, ", ".join(
                              sorted(labels))))
      else:
        label = self.placeholder_label
      examples.append(glue_processors.InputExample(
          guid="%s-%d" % (split, i), text_a=text_a, text_b=text_b,
          label=label, index=str(i) if split == "test" else None))
    return examples

  @staticmethod
  def _field(row, column, where):
    if column not in row:
      raise UserError("%s: no column %r (columns: %s)"
                      % (where, column, clip_value(", ".join(sorted(row)))))
    value = row[column]
    value = "" if value is None else str(value)
    if not value.strip():
      raise UserError("%s: column %r is empty" % (where, column))
    return value


def _lift_csv_field_limit():
  """The csv module refuses fields over 128 KiB; a user's text may be longer.
  Raised to the largest the platform's C long takes."""
  limit = sys.maxsize
  while True:
    try:
      csv.field_size_limit(limit)
      return
    except OverflowError:
      limit //= 2


def _next_csv_row(reader, path):
  """The next row of a csv.reader (None at the end).

  Raises:
    UserError: for a row the csv module cannot parse (naming the line).
  """
  try:
    return next(reader, None)
  except csv.Error as e:
    raise UserError("%s line %d: %s" % (path, reader.line_num + 1, e)
                    ) from None


def _rows(path):
  """[(where, {column: value})] of a CSV, TSV or JSON Lines file (UTF-8,
  with or without a byte-order mark, as Excel's "CSV UTF-8" writes)."""
  _lift_csv_field_limit()
  try:
    with open(path, encoding="utf-8-sig", newline="") as f:
      if path.endswith(".jsonl"):
        out = []
        for number, line in enumerate(f, start=1):
          if not line.strip():
            continue
          where = "%s line %d" % (path, number)
          try:
            row = json.loads(line)
          except ValueError as e:
            raise UserError("%s: not a JSON object (%s)" % (where, e)
                            ) from None
          if not isinstance(row, dict):
            raise UserError("%s: not a JSON object" % where)
          out.append((where, row))
        return out
      reader = csv.reader(f, delimiter="\t" if path.endswith(".tsv")
                          else ",")
      out = []
      header = _next_csv_row(reader, path)
      if not header:
        raise UserError("%s is empty (expected a header row)" % path)
      while True:
        fields = _next_csv_row(reader, path)
        if fields is None:
          break
        number = reader.line_num
        if not fields:
          continue
        if len(fields) != len(header):
          raise UserError("%s line %d: %d fields, the header has %d"
                          % (path, number, len(fields), len(header)))
        out.append(("%s line %d" % (path, number), dict(zip(header,
                                                               fields))))
      return out
  except OSError as e:
    raise UserError("%s: cannot read: %s" % (path, e.strerror or e)) from None
  except UnicodeDecodeError as e:
    raise UserError("%s is not UTF-8 text (byte %d)" % (path, e.start)
                    ) from None
