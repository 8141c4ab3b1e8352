# coding=utf-8
"""Measures the throughput of the Python and in-graph BERT tokenizers.

Reads sentences from GLUE TSV files (or plain text files, one sentence per
line), tokenizes all of them with `tokenization.FullTokenizer` and with
`tokenization.InGraphTokenizer` (batched, inside a `tf.function`, after a
warm-up; and as a `tf.data` map), checks that both give the same ids, and
prints one JSON line followed by a Markdown table.

Example:
  python scripts/lab/benchmark_tokenization.py \
      --vocab_file=../shared/bert/minilm_l6_h384_uncased/vocab.txt
"""

import argparse
import csv
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, _REPO)

from adapter_bert.compute import tf_startup  # noqa: E402,F401  (before TensorFlow: oneDNN kernels)
import tensorflow as tf  # noqa: E402

from adapter_bert import errors  # noqa: E402
from adapter_bert.text import tokenization  # noqa: E402

_SHARED = os.path.join(os.path.dirname(_REPO), "shared")
_DEFAULT_DATA = ",".join([
    os.path.join(_SHARED, "glue_data", "SST-2", "train.tsv"),
    os.path.join(_SHARED, "glue_data", "MRPC", "train.tsv"),
])
_DEFAULT_VOCAB = os.path.join(_SHARED, "bert", "minilm_l6_h384_uncased",
                              "vocab.txt")

# GLUE task directory -> {split: text columns}; the header row is skipped.
_GLUE_TEXT_COLUMNS = {
    "MRPC": {"train": (3, 4), "dev": (3, 4), "test": (3, 4)},
    "SST-2": {"train": (0,), "dev": (0,), "test": (1,)},
    "RTE": {"train": (1, 2), "dev": (1, 2), "test": (1, 2)},
    "CoLA": {"train": (3,), "dev": (3,), "test": (1,)},
}


def _parse_flags(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--vocab_file", default=_DEFAULT_VOCAB,
                      help="WordPiece vocabulary (default: the shared MiniLM "
                      "uncased vocab).")
  parser.add_argument("--data", default=_DEFAULT_DATA,
                      help="Comma-separated GLUE TSV files (MRPC, SST-2, RTE, "
                      "CoLA layout) or text files with one sentence per line.")
  parser.add_argument("--do_lower_case", default=True,
                      type=lambda s: _parse_bool("--do_lower_case", s),
                      help="Lower-case and strip accents (true/false).")
  parser.add_argument("--batch_size", type=int, default=4096,
                      help="Sentences per in-graph call.")
  parser.add_argument("--repeats", type=int, default=3,
                      help="Timed passes over the data; the best is kept.")
  return parser.parse_args(argv)


def _parse_bool(flag, value):
  if value.lower() in ("1", "true", "yes"):
    return True
  if value.lower() in ("0", "false", "no"):
    return False
  raise argparse.ArgumentTypeError("%s must be true or false, got %r"
                                   % (flag, value))


def read_sentences(path):
  """Returns the sentences of a GLUE TSV file or of a one-per-line file.

  Raises:
    errors.UserError: if the file is missing or a row lacks a text column.
  """
  if not os.path.isfile(path):
    raise errors.UserError("--data file not found: %s" % path)
  task = os.path.basename(os.path.dirname(os.path.abspath(path)))
  split = os.path.splitext(os.path.basename(path))[0]
  columns = _GLUE_TEXT_COLUMNS.get(task, {}).get(split)
  with open(path, encoding="utf-8-sig", newline="") as f:
    if columns is None:
      return [line.rstrip("\r\n") for line in f]
    rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  sentences = []
  for line, row in enumerate(rows[1:], start=2):
    if len(row) <= max(columns):
      raise errors.UserError("%s line %d: expected at least %d tab-separated "
                             "columns, found %d"
                             % (path, line, max(columns) + 1, len(row)))
    sentences.extend(row[c] for c in columns)
  return sentences


def _best_time(fn, repeats):
  best, result = None, None
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    best = elapsed if best is None else min(best, elapsed)
  return best, result


def run(flags):
  """Runs the benchmark and returns the figures as a dict."""
  sentences = []
  for path in flags.data.split(","):
    if path:
      sentences.extend(read_sentences(path))
  if not sentences:
    raise errors.UserError("--data holds no sentences: %s" % flags.data)
  if flags.batch_size < 1 or flags.repeats < 1:
    raise errors.UserError("--batch_size and --repeats must be positive")

  python = tokenization.FullTokenizer(flags.vocab_file, flags.do_lower_case)
  start = time.perf_counter()
  graph = tokenization.InGraphTokenizer(flags.vocab_file, flags.do_lower_case)
  build_s = time.perf_counter() - start

  def python_pass():
    return [python.convert_tokens_to_ids(python.tokenize(s))
            for s in sentences]

  batches = [tf.constant(sentences[i:i + flags.batch_size])
             for i in range(0, len(sentences), flags.batch_size)]

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def tokenize_batch(texts):
    ids = graph.tokenize(texts)  # [batch, (pieces)]
    return ids.flat_values, ids.row_splits

  def graph_pass():
    return [tokenize_batch(b) for b in batches]

  dataset = (tf.data.Dataset.from_tensor_slices(sentences)
             .batch(flags.batch_size)
             .map(graph.tokenize, num_parallel_calls=tf.data.AUTOTUNE)
             .prefetch(tf.data.AUTOTUNE))

  def dataset_pass():
    return sum(int(ids.nrows()) for ids in dataset)

  start = time.perf_counter()
  tokenize_batch(batches[0])  # Warm-up: tracing and table initialisation.
  warmup_s = time.perf_counter() - start
  dataset_pass()  # Warm-up of the tf.data pipeline.

  python_s, python_ids = _best_time(python_pass, flags.repeats)
  graph_s, graph_out = _best_time(graph_pass, flags.repeats)
  dataset_s, dataset_rows = _best_time(dataset_pass, flags.repeats)

  graph_ids = []
  for values, splits in graph_out:
    values, splits = values.numpy().tolist(), splits.numpy().tolist()
    graph_ids.extend(values[a:b] for a, b in zip(splits[:-1], splits[1:]))
  mismatches = sum(p != g for p, g in zip(python_ids, graph_ids))
  n = len(sentences)
  return {
      "benchmark": "tokenization",
      "sentences": n,
      "wordpieces": sum(len(ids) for ids in python_ids),
      "do_lower_case": flags.do_lower_case,
      "batch_size": flags.batch_size,
      "repeats": flags.repeats,
      "python_sentences_per_s": round(n / python_s, 1),
      "in_graph_sentences_per_s": round(n / graph_s, 1),
      "tf_data_sentences_per_s": round(n / dataset_s, 1),
      "speedup_in_graph_vs_python": round(python_s / graph_s, 2),
      "in_graph_build_s": round(build_s, 2),
      "in_graph_warmup_s": round(warmup_s, 2),
      "ids_identical": mismatches == 0 and dataset_rows == n,
      "mismatched_sentences": mismatches,
      "data": flags.data,
      "vocab_file": flags.vocab_file,
      "cpu_count": os.cpu_count(),
      "machine": platform.machine(),
      "tensorflow": tf.__version__,
  }


def markdown_table(result):
  rows = [
      ("Python FullTokenizer", result["python_sentences_per_s"], 1.0),
      ("InGraphTokenizer (tf.function, batch %d)" % result["batch_size"],
       result["in_graph_sentences_per_s"],
       result["speedup_in_graph_vs_python"]),
      ("InGraphTokenizer (tf.data map, batch %d)" % result["batch_size"],
       result["tf_data_sentences_per_s"],
       round(result["tf_data_sentences_per_s"]
             / result["python_sentences_per_s"], 2)),
  ]
  lines = ["| tokenizer | sentences/s | vs Python |", "|---|---:|---:|"]
  lines += ["| %s | %.0f | %.2fx |" % row for row in rows]
  return "\n".join(lines)


def main(argv=None):
  flags = _parse_flags(argv)
  try:
    result = run(flags)
  except errors.UserError as e:
    print("error: %s" % e, file=sys.stderr)
    return 1
  print(json.dumps(result, sort_keys=True))
  print()
  print("%d sentences, do_lower_case=%s, ids identical: %s"
        % (result["sentences"], result["do_lower_case"],
           result["ids_identical"]))
  print()
  print(markdown_table(result))
  return 0 if result["ids_identical"] else 2


if __name__ == "__main__":
  sys.exit(main())
