"""Feature conversion (in graph vs. a Python reference), cache, tf.data."""

import json
import os
import random

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert.data import glue_processors
from adapter_bert.data import input_pipeline
from adapter_bert.text import tokenization
from adapter_bert.errors import UserError
from adapter_bert.data.glue_processors import InputExample

# A tiny WordPiece vocabulary: specials, some words, pieces, every letter.
_WORDS = ("the a cat dog sat on mat run play is was it he she big small house "
          "un ##believ ##able ##s ##ing ##ed cafe 中 文 hello world . , ! ? "
          "\" ' ( ) - : ;").split()
_LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + _WORDS + _LETTERS
         + ["##" + c for c in _LETTERS])


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
  return str(path)


@pytest.fixture(scope="module")
def in_graph(vocab_file):
  return tokenization.InGraphTokenizer(vocab_file, do_lower_case=True)


@pytest.fixture(scope="module")
def python_tokenizer(vocab_file):
  return tokenization.FullTokenizer(vocab_file, do_lower_case=True)


# --- The reference: google-research/bert's algorithm, in plain Python. -------


def pop_until_fits(tokens_a, tokens_b, max_length):
  """Removes one token at a time from the longer list (b on a tie)."""
  while len(tokens_a) + len(tokens_b) > max_length:
    if len(tokens_a) > len(tokens_b):
      tokens_a.pop()
    else:
      tokens_b.pop()


def reference_features(example, label_map, max_seq_length, tokenizer):
  """One example's padded features, computed as run_classifier.py does."""
  tokens_a = tokenizer.tokenize(example.text_a)
  tokens_b = tokenizer.tokenize(example.text_b) if example.text_b else None
  if tokens_b:
    pop_until_fits(tokens_a, tokens_b, max_seq_length - 3)
  else:
    tokens_a = tokens_a[:max_seq_length - 2]
  tokens = ["[CLS]"] + tokens_a + ["[SEP]"]
  segments = [0] * len(tokens)
  if tokens_b:
    tokens += tokens_b + ["[SEP]"]
    segments += [1] * (len(tokens_b) + 1)
  ids = tokenizer.convert_tokens_to_ids(tokens)
  mask = [1] * len(ids)
  padding = [0] * (max_seq_length - len(ids))
  label = (float(example.label) if label_map is None
           else label_map[example.label])
  return {"input_ids": ids + padding, "input_mask": mask + padding,
          "segment_ids": segments + padding, "label_ids": label}


def batches_to_arrays(dataset):
  out = {}
  for batch in dataset.as_numpy_iterator():
    for key, value in batch.items():
      out.setdefault(key, []).append(value)
  return {key: np.concatenate(values) for key, values in out.items()}


def random_text(rng, max_words):
  pool = _WORDS[:20] + ["cats", "running", "unbelievable", "Hello",
                        "WORLD!", "caf\u00e9", "\u4e2d\u6587", "xyzzy",
                        "(big)", "it's", "\"quoted\"", "qwertyuiop"]
  return " ".join(rng.choice(pool) for _ in range(rng.randint(1, max_words)))


def fixture_examples(seed, count, pairs=True, max_words=14):
  rng = random.Random(seed)
  labels = ["contradiction", "entailment", "neutral"]
  examples = []
  for i in range(count):
    examples.append(InputExample(
        guid="dev-%d" % i, text_a=random_text(rng, max_words),
        text_b=random_text(rng, max_words) if pairs else None,
        label=labels[i % 3]))
  return examples


# --- Truncation and packing. -------------------------------------------------


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64])
def test_truncated_lengths_equal_the_popping_loop(dtype):
  for max_seq_length in (3, 4, 5, 8, 9, 16):
    pairs = [(la, lb) for la in range(21) for lb in range(21)]
    keep_a, keep_b = input_pipeline.truncated_lengths(
        tf.constant([p[0] for p in pairs], dtype),
        tf.constant([p[1] for p in pairs], dtype), max_seq_length)
    assert keep_a.dtype == dtype and keep_b.dtype == dtype
    for (la, lb), ka, kb in zip(pairs, keep_a.numpy(), keep_b.numpy()):
      a, b = list(range(la)), list(range(lb))
      if lb:
        pop_until_fits(a, b, max_seq_length - 3)
      else:
        a = a[:max_seq_length - 2]
      assert (ka, kb) == (len(a), len(b)), (max_seq_length, la, lb)


def test_pack_pairs_values_and_empty_batches():
  ids_a = tf.ragged.constant([[5, 6, 7], [8], [9, 10]], tf.int32)
  ids_b = tf.ragged.constant([[11], [], [12, 13, 14, 15]], tf.int32)
  input_ids, segment_ids = input_pipeline.pack_pairs(ids_a, ids_b, 6, 1, 2)
  assert input_ids.to_list() == [[1, 5, 6, 2, 11, 2], [1, 8, 2],
                                 [1, 9, 10, 2, 12, 2]]
  assert segment_ids.to_list() == [[0, 0, 0, 0, 1, 1], [0, 0, 0],
                                   [0, 0, 0, 0, 1, 1]]
  # Every row empty (both texts tokenized to nothing), and no rows at all.
  empty = tf.ragged.constant([[], []], tf.int32)
  input_ids, segment_ids = input_pipeline.pack_pairs(empty, empty, 6, 1, 2)
  assert input_ids.to_list() == [[1, 2], [1, 2]]
  assert segment_ids.to_list() == [[0, 0], [0, 0]]
  none = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32),
                                          tf.zeros([0], tf.int64))
  input_ids, _ = input_pipeline.pack_pairs(none, none, 6, 1, 2)
  assert input_ids.to_list() == []


EDGE_EXAMPLES = [
    InputExample("e-0", "the cat", "a dog", "entailment"),
    # b tokenizes to nothing: the original treats it as a single sentence.
    InputExample("e-1", "the cat sat on the mat " * 4, "\u200b", "neutral"),
    InputExample("e-2", "\u200b", "hello world", "neutral"),
    InputExample("e-3", "Unbelievable! " * 6, "x " * 30, "contradiction"),
    InputExample("e-4", "x " * 30, "Unbelievable! " * 6, "contradiction"),
    InputExample("e-5", "a b c d e f g", "h i j k l m n", "entailment"),
    InputExample("e-6", "Caf\u00e9 \u4e2d\u6587 (big) it's \"run\"",
                 "HELLO, world?", "entailment"),
]


@pytest.mark.parametrize("max_seq_length", [5, 8, 12, 32])
def test_in_graph_features_equal_the_python_reference(
    tmp_path, vocab_file, in_graph, python_tokenizer, max_seq_length):
  label_list = ["contradiction", "entailment", "neutral"]
  label_map = {label: i for i, label in enumerate(label_list)}
  for name, examples in (
      ("pairs", EDGE_EXAMPLES + fixture_examples(1, 60)),
      ("single", fixture_examples(2, 40, pairs=False, max_words=20))):
    path = str(tmp_path / ("%s-%d.tf_record" % (name, max_seq_length)))
    count = input_pipeline.write_feature_file(
        examples, label_list, False, max_seq_length, in_graph, path)
    assert count == len(examples)
    feature_file = input_pipeline.FeatureFile(path, count, max_seq_length,
                                              False, "test")
    got = batches_to_arrays(input_pipeline.eval_dataset(feature_file, 16))
    real = got["is_real_example"] == 1
    assert real.sum() == len(examples)
    for i, example in enumerate(examples):
      want = reference_features(example, label_map, max_seq_length,
                                python_tokenizer)
      for key, value in want.items():
        np.testing.assert_array_equal(got[key][real][i], value,
                                      err_msg="%s %s" % (example.guid, key))
    assert got["input_ids"].dtype == np.int32
    assert got["label_ids"].dtype == np.int32


def test_regression_labels_are_float32(tmp_path, in_graph):
  examples = [InputExample("train-%d" % i, "the cat", "a dog", score)
              for i, score in enumerate([0.0, 2.5, 4.75])]
  path = str(tmp_path / "stsb.tf_record")
  input_pipeline.write_feature_file(examples, None, True, 16, in_graph, path)
  feature_file = input_pipeline.FeatureFile(path, 3, 16, True, "k")
  got = batches_to_arrays(input_pipeline.eval_dataset(feature_file, 2))
  assert got["label_ids"].dtype == np.float32
  np.testing.assert_array_equal(got["label_ids"], [0.0, 2.5, 4.75, 0.0])
  np.testing.assert_array_equal(got["is_real_example"], [1, 1, 1, 0])


def test_unknown_label_and_tiny_max_seq_length(tmp_path, in_graph):
  examples = [InputExample("train-0", "the cat", None, "maybe")]
  with pytest.raises(UserError, match="train-0"):
    input_pipeline.write_feature_file(examples, ["0", "1"], False, 16,
                                      in_graph, str(tmp_path / "x"))
  with pytest.raises(UserError, match="max_seq_length"):
    input_pipeline.convert_examples(examples, 2, in_graph)
  assert not os.listdir(tmp_path)


def test_real_mrpc_dev_matches_the_reference(tmp_path, glue_dir, minilm_dir):
  vocab = os.path.join(minilm_dir, "vocab.txt")
  data = input_pipeline.GlueData("mrpc", glue_dir, vocab, True, 64,
                                 str(tmp_path))
  python_tokenizer = tokenization.FullTokenizer(vocab, do_lower_case=True)
  examples = data.examples("dev")
  got = batches_to_arrays(data.eval_dataset("dev", batch_size=32))
  real = got["is_real_example"] == 1
  assert real.sum() == 408
  label_map = {"0": 0, "1": 1}
  for i, example in enumerate(examples):
    want = reference_features(example, label_map, 64, python_tokenizer)
    for key, value in want.items():
      np.testing.assert_array_equal(got[key][real][i], value,
                                    err_msg="%s %s" % (example.guid, key))


# --- Eval / predict batches. -------------------------------------------------


@pytest.fixture(scope="module")
def eval_file_408(tmp_path_factory, in_graph):
  examples = fixture_examples(3, 408, max_words=30)
  path = str(tmp_path_factory.mktemp("eval") / "dev.tf_record")
  input_pipeline.write_feature_file(
      examples, ["contradiction", "entailment", "neutral"], False, 64,
      in_graph, path)
  return input_pipeline.FeatureFile(path, 408, 64, False, "k")


@pytest.mark.parametrize("bucket", [None, True, (8, 16, 24)])
def test_eval_counts_every_example_exactly_once(eval_file_408, bucket):
  dataset = input_pipeline.eval_dataset(eval_file_408, 32, bucket=bucket)
  batches = list(dataset.as_numpy_iterator())
  assert len(batches) == 13 == input_pipeline.num_eval_batches(408, 32)
  reference = batches_to_arrays(input_pipeline.eval_dataset(eval_file_408,
                                                            32))
  boundaries = (input_pipeline.default_bucket_boundaries(64)
                if bucket is True else (tuple(bucket) + (64,) if bucket
                                        else (64,)))
  for batch in batches:
    assert batch["input_ids"].shape[0] == 32
    width = batch["input_ids"].shape[1]
    longest = batch["input_mask"].sum(axis=1).max()
    # The smallest boundary that covers the longest example.
    assert width == min(b for b in boundaries if b >= longest)
  got = {key: np.concatenate([b[key] for b in batches])
         for key in ("is_real_example", "example_index", "label_ids")}
  real = got["is_real_example"] == 1
  assert real.sum() == 408 and (~real).sum() == 13 * 32 - 408
  # Order is kept: real examples first, in order, then the padding.
  np.testing.assert_array_equal(got["example_index"][real], np.arange(408))
  assert (got["example_index"][~real] == -1).all()
  assert real[:408].all()
  np.testing.assert_array_equal(got["label_ids"], reference["label_ids"])
  # Trimmed batches hold the same values as full-width ones.
  row = 0
  for batch in batches:
    width = batch["input_ids"].shape[1]
    for key in ("input_ids", "input_mask", "segment_ids"):
      full = reference[key][row:row + 32]
      np.testing.assert_array_equal(batch[key], full[:, :width])
      assert not full[:, width:].any()
    row += 32
  padding = reference["input_mask"][~reference["is_real_example"].astype(
      bool)]
  assert not padding.any()


def test_default_bucket_boundaries():
  assert input_pipeline.default_bucket_boundaries(128) == tuple(
      range(16, 129, 16))
  assert input_pipeline.default_bucket_boundaries(128, 8) == tuple(
      range(8, 129, 8))
  assert input_pipeline.default_bucket_boundaries(100, 8) == tuple(
      range(8, 97, 8)) + (100,)
  assert input_pipeline.default_bucket_boundaries(512) == (
      tuple(range(16, 129, 16)) + tuple(range(160, 257, 32))
      + tuple(range(320, 513, 64)))
  with pytest.raises(ValueError, match="divide 128"):
    input_pipeline.default_bucket_boundaries(128, 12)


def test_eval_static_shapes_without_bucketing(eval_file_408):
  spec = input_pipeline.eval_dataset(eval_file_408, 32).element_spec
  assert spec["input_ids"].shape.as_list() == [32, 64]
  assert spec["is_real_example"].shape.as_list() == [32]
  spec = input_pipeline.eval_dataset(eval_file_408, 32,
                                     bucket=True).element_spec
  assert spec["input_ids"].shape.as_list() == [32, None]


# --- Training stream. --------------------------------------------------------


def first_batches(dataset, count):
  return [b for _, b in zip(range(count), dataset.as_numpy_iterator())]


def test_train_stream_is_seeded_and_resumable(eval_file_408):
  # 408 examples, batch 24: 17 batches per epoch; batch 50 with 408 % 50 != 0
  # spans epochs.
  for batch_size in (24, 50):
    stream = first_batches(input_pipeline.train_dataset(
        eval_file_408, batch_size, seed=7), 30)
    again = first_batches(input_pipeline.train_dataset(
        eval_file_408, batch_size, seed=7), 30)
    tf.random.set_seed(12345)  # The global seed plays no part.
    other_global = first_batches(input_pipeline.train_dataset(
        eval_file_408, batch_size, seed=7), 30)
    for a, b, c in zip(stream, again, other_global):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], c[key])
    for start in (1, 5, 16, 17, 29):
      resumed = first_batches(input_pipeline.train_dataset(
          eval_file_408, batch_size, seed=7, start_step=start), 30 - start)
      assert len(resumed) == 30 - start
      for a, b in zip(stream[start:], resumed):
        for key in a:
          np.testing.assert_array_equal(a[key], b[key])
    order = np.concatenate([b["example_index"] for b in stream])
    # Each epoch visits every example once, in a new order.
    epochs = [order[e * 408:(e + 1) * 408] for e in range(len(order) // 408)]
    assert len(epochs) >= 1
    for epoch in epochs:
      np.testing.assert_array_equal(np.sort(epoch), np.arange(408))
    if len(epochs) > 1:
      assert (epochs[0] != epochs[1]).any()
    assert (epochs[0] != np.arange(408)).any()
    assert all(b["is_real_example"].all() for b in stream)
    assert all(b["input_ids"].shape == (batch_size, 64) for b in stream)
  other_seed = first_batches(input_pipeline.train_dataset(
      eval_file_408, 24, seed=8), 1)
  assert (other_seed[0]["example_index"] != first_batches(
      input_pipeline.train_dataset(eval_file_408, 24, seed=7), 1)[0][
          "example_index"]).any()


def test_train_bucketing_trims_the_same_batches(eval_file_408):
  plain = first_batches(input_pipeline.train_dataset(eval_file_408, 32,
                                                     seed=1), 20)
  bucketed = first_batches(input_pipeline.train_dataset(
      eval_file_408, 32, seed=1, bucket=(16, 32, 48)), 20)
  widths = set()
  for a, b in zip(plain, bucketed):
    width = b["input_ids"].shape[1]
    widths.add(width)
    np.testing.assert_array_equal(a["example_index"], b["example_index"])
    np.testing.assert_array_equal(a["label_ids"], b["label_ids"])
    for key in ("input_ids", "input_mask", "segment_ids"):
      np.testing.assert_array_equal(a[key][:, :width], b[key])
      assert not a[key][:, width:].any()
    longest = a["input_mask"].sum(axis=1).max()
    assert width == min(w for w in (16, 32, 48, 64) if w >= longest)
  assert widths <= {16, 32, 48, 64}


@pytest.mark.parametrize("batch_size,window", [(24, 4), (50, 3)])
def test_train_grouping_by_length(eval_file_408, batch_size, window):
  def stream(start=0, count=30, seed=7):
    return first_batches(input_pipeline.train_dataset(
        eval_file_408, batch_size, seed=seed, start_step=start,
        group_batches=window), count)

  plain = first_batches(input_pipeline.train_dataset(
      eval_file_408, batch_size, seed=7), 30)
  grouped = stream()
  # Seeded and resumable at any step, windows straddling epochs included.
  for a, b in zip(grouped, stream()):
    np.testing.assert_array_equal(a["example_index"], b["example_index"])
  for start in (1, window, window + 1, 17, 29):
    resumed = stream(start, 30 - start)
    assert len(resumed) == 30 - start
    for a, b in zip(grouped[start:], resumed):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
  lengths = {}
  for batch in plain:
    for i, m in zip(batch["example_index"], batch["input_mask"]):
      lengths[int(i)] = int(m.sum())
  for w in range(30 // window):
    chunk = slice(w * window, (w + 1) * window)
    ours = [b["example_index"] for b in grouped[chunk]]
    theirs = np.concatenate([b["example_index"] for b in plain[chunk]])
    # The same examples as the plain stream's window, ...
    np.testing.assert_array_equal(np.sort(np.concatenate(ours)),
                                  np.sort(theirs))
    # ... cut into batches of consecutive lengths (a sorted partition), ...
    spans = sorted((min(lengths[int(i)] for i in b),
                    max(lengths[int(i)] for i in b)) for b in ours)
    for (_, high), (low, _) in zip(spans, spans[1:]):
      assert high <= low
  # ... in a shuffled order (not shortest first in every window).
  shortest = [min(lengths[int(i)] for i in b["example_index"])
              for b in grouped]
  assert any(shortest[w * window:(w + 1) * window]
             != sorted(shortest[w * window:(w + 1) * window])
             for w in range(30 // window))
  # The rows match the record they name, and grouping cuts the padding.
  for batch in grouped:
    np.testing.assert_array_equal(
        batch["input_mask"].sum(axis=1),
        [lengths[int(i)] for i in batch["example_index"]])
  longest = lambda batches: np.mean([b["input_mask"].sum(axis=1).max()
                                     for b in batches])
  assert longest(grouped) < longest(plain)
  other = stream(seed=8, count=1)[0]["example_index"]
  assert (other != grouped[0]["example_index"]).any()


def test_num_train_steps():
  assert input_pipeline.num_train_steps(3668, 32, 3.0) == 343
  assert input_pipeline.num_train_steps(10, 4, 1) == 2


# --- The cache. --------------------------------------------------------------


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def write_rte(directory, rows):
  directory.mkdir(parents=True, exist_ok=True)
  for split in ("train", "dev"):
    text = RTE_HEADER + "".join("%d\t%s\t%s\t%s\n" % ((i,) + row)
                                for i, row in enumerate(rows))
    (directory / ("%s.tsv" % split)).write_text(text, encoding="utf-8")
  return str(directory)


RTE_ROWS = [("the cat sat", "a cat sat", "entailment"),
            ("the dog ran", "a cat sat on the mat", "not_entailment"),
            ("hello world", "hello", "entailment")]


def test_cache_key_changes_with_every_ingredient(tmp_path, vocab_file):
  other_vocab = tmp_path / "vocab.txt"
  other_vocab.write_text(open(vocab_file, encoding="utf-8").read(),
                         encoding="utf-8")
  base = dict(task_name="RTE", split="train", max_seq_length=128,
              vocab_file=str(other_vocab), do_lower_case=True,
              source_fingerprint="file:10:abc")
  key = input_pipeline.cache_key(**base)
  assert key == input_pipeline.cache_key(**base)
  changes = [("task_name", "MRPC"), ("split", "dev"), ("max_seq_length", 64),
             ("do_lower_case", False), ("source_fingerprint", "file:10:abd")]
  keys = {key}
  for name, value in changes:
    keys.add(input_pipeline.cache_key(**dict(base, **{name: value})))
  keys.add(input_pipeline.cache_key(**base, format_version=(
      input_pipeline.FORMAT_VERSION + 1)))
  # Same vocabulary path, different content.
  other_vocab.write_text(open(vocab_file, encoding="utf-8").read()
                         + "extra\n", encoding="utf-8")
  keys.add(input_pipeline.cache_key(**base))
  assert len(keys) == len(changes) + 3


def test_cache_key_follows_the_data_file(tmp_path, vocab_file):
  data_dir = write_rte(tmp_path / "RTE", RTE_ROWS)
  cache_dir = str(tmp_path / "features")

  def key():
    return input_pipeline.GlueData("rte", data_dir, vocab_file, True, 32,
                                   cache_dir).cache_key("train")

  first = key()
  assert first == key()
  train = tmp_path / "RTE" / "train.tsv"
  text = train.read_text(encoding="utf-8")
  # Same size, one character changed.
  train.write_text(text.replace("the dog ran", "the dog run"),
                   encoding="utf-8")
  assert len(train.read_bytes()) == len(text.encode("utf-8"))
  second = key()
  assert second != first
  train.write_text(text + "3\tx\ty\tentailment\n", encoding="utf-8")
  assert key() not in (first, second)
  train.write_text(text, encoding="utf-8")
  assert key() == first  # Content, not mtime, decides.


def test_cache_is_reused_and_never_used_when_broken(tmp_path, vocab_file,
                                                    in_graph, monkeypatch):
  data_dir = write_rte(tmp_path / "RTE", RTE_ROWS)
  cache_dir = str(tmp_path / "features")

  def data():
    return input_pipeline.GlueData("rte", data_dir, vocab_file, True, 32,
                                   cache_dir, tokenizer=in_graph)

  first = data().feature_file("train")
  record, sidecar = input_pipeline.cache_paths(cache_dir, "train", first.key)
  assert first.path == record and os.path.exists(sidecar)
  assert json.load(open(sidecar))["num_examples"] == 3
  assert os.path.basename(record) == "train-%s.tf_record" % first.key
  content = open(record, "rb").read()

  # Reused: a new GlueData finds it without converting.
  def no_conversion(*args, **kwargs):
    raise AssertionError("converted again")

  monkeypatch.setattr(input_pipeline, "write_feature_file", no_conversion)
  again = data()
  assert again.num_examples("train") == 3
  assert again.feature_file("train") == first
  monkeypatch.undo()

  # A truncated record file is detected and rebuilt.
  with open(record, "wb") as f:
    f.write(content[:len(content) // 2])
  assert input_pipeline.load_cached(cache_dir, "train", first.key,
                                    False) is None
  rebuilt = data().feature_file("train")
  assert rebuilt == first and open(record, "rb").read() == content

  # No sidecar (e.g. a crash between the two renames): rebuilt too.
  os.unlink(sidecar)
  assert input_pipeline.load_cached(cache_dir, "train", first.key,
                                    False) is None
  assert data().feature_file("train") == first
  assert os.path.exists(sidecar)

  # A crash during conversion leaves no cache file behind, not even partial.
  for name in os.listdir(cache_dir):
    os.unlink(os.path.join(cache_dir, name))
  real_convert = input_pipeline.convert_examples

  def crash_after_first_batch(*args, **kwargs):
    for i, batch in enumerate(real_convert(*args, batch_size=1, **kwargs)):
      if i == 1:
        raise RuntimeError("crash")
      yield batch

  monkeypatch.setattr(input_pipeline, "convert_examples",
                      crash_after_first_batch)
  with pytest.raises(RuntimeError, match="crash"):
    data().feature_file("train")
  assert os.listdir(cache_dir) == []
  monkeypatch.undo()
  assert data().feature_file("train") == first


def test_glue_data_splits_and_datasets(tmp_path, vocab_file, in_graph):
  data_dir = write_rte(tmp_path / "RTE", RTE_ROWS)
  data = input_pipeline.GlueData("rte", data_dir, vocab_file, True, 32,
                                 str(tmp_path / "features"),
                                 tokenizer=in_graph)
  assert data.num_examples("dev") == 3
  assert data.cache_key("train") != data.cache_key("dev")
  batch = next(iter(data.train_dataset(batch_size=2, seed=0)))
  assert batch["input_ids"].shape == (2, 32)
  dev = batches_to_arrays(data.eval_dataset("dev", batch_size=2))
  np.testing.assert_array_equal(dev["label_ids"], [0, 1, 0, 0])
  np.testing.assert_array_equal(dev["is_real_example"], [1, 1, 1, 0])
  with pytest.raises(UserError, match="RTE test file not found"):
    data.num_examples("test")


def test_glue_data_from_tfds(tmp_path, vocab_file, in_graph):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=5,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    data = input_pipeline.GlueData("sst-2", None, vocab_file, True, 16,
                                   str(tmp_path / "features"),
                                   tokenizer=in_graph)
    assert data.num_examples("dev") == 5
    key = data.cache_key("dev")
    got = batches_to_arrays(data.eval_dataset("dev", batch_size=4))
  assert got["is_real_example"].sum() == 5
  labels = [int(e.label) for e in data.examples("dev")]
  np.testing.assert_array_equal(got["label_ids"][:5], labels)
  assert key == input_pipeline.cache_key(
      "SST-2", "dev", 16, vocab_file, True, "examples:"
      + input_pipeline.examples_fingerprint(data.examples("dev")))


def test_pipelines_do_not_autotune(eval_file_408):
  # tf.data's autotuning thread sleeps for a period that doubles while the
  # iterator lives, and deleting the iterator waits for that sleep: the end
  # of a training run (the last checkpoint, then the adapter directory)
  # waited 18-49 s on it. The pipelines set their own parallelism instead.
  for dataset in (input_pipeline.train_dataset(eval_file_408, 8, seed=1,
                                               group_batches=4),
                  input_pipeline.eval_dataset(eval_file_408, 8)):
    assert dataset.options().autotune.enabled is False
    # The parsed batches still arrive (and in the same order as without
    # prefetching: the map is deterministic).
    first = next(iter(dataset))
    assert first["input_ids"].shape[0] == 8
