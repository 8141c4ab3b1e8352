# coding=utf-8
"""GLUE examples -> cached features -> `tf.data` input pipelines.

Feature conversion follows google-research/bert `run_classifier.py`: the
input is `[CLS] a [SEP] b [SEP]` (or `[CLS] a [SEP]`), a pair longer than
`max_seq_length - 3` wordpieces is truncated longest-first (one token at a time
from the longer sequence, from `b` on a tie), a single sentence is cut to
`max_seq_length - 2`, segment ids are 0 up to and including the first `[SEP]`
and 1 after it, and the model sees zero-padded `input_ids`, `input_mask` and
`segment_ids` of length `max_seq_length`. Here tokenization, truncation and
packing run as TensorFlow graphs (`tokenization.InGraphTokenizer` and
`pack_pairs`) on batches of raw text drawn from a `tf.data` pipeline; the
tests check the result against the original algorithm in plain Python.

The converted features are cached as a TFRecord file of `tf.train.Example`s,
without the padding (`input_ids` and `segment_ids` int64 lists, `label_ids`
int64 or float): `<cache_dir>/<split>-<key>.tf_record` and a JSON sidecar
`<split>-<key>.json` with the number of examples and the record file's size
and SHA-256. The key hashes everything the features depend on (task, split,
max_seq_length, the vocabulary file's content, do_lower_case, the source data,
the tokenizer code and `FORMAT_VERSION`), so a change of any of them never
reuses a stale cache. Both files are written under a temporary name and
renamed into place (record file first, sidecar last); a cache whose sidecar
is missing or does not match its record file is rebuilt.

Pipelines yield dicts of:
  input_ids, input_mask, segment_ids: int32 [batch, seq]
  label_ids: int32 [batch] (float32 for regression)
  is_real_example: int32 [batch], 0 for the padding of eval/predict batches
  example_index: int32 [batch], position of the example in its split (-1 for
    padding)
`seq` is `max_seq_length`, or with length bucketing the smallest bucket
boundary that covers the longest example of the batch.
"""

import dataclasses
import hashlib
import json
import math
import os

import tensorflow as tf

from adapter_bert.storage import atomic_io
from adapter_bert.data import glue_processors
from adapter_bert.storage.atomic_io import atomic_write_text
from adapter_bert.errors import UserError
from adapter_bert.text import tokenization
from adapter_bert.text import packing
from adapter_bert.text.packing import pack_pairs, truncated_lengths  # noqa: F401  (also this module's API)

# Bump when the stored features or their meaning change.
FORMAT_VERSION = 1

# Texts per tokenizer call while converting.
_CONVERT_BATCH_SIZE = 512
_HASH_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class FeatureFile:
  """A cached feature file and what the pipelines need to know about it.

  Attributes:
    path: the TFRecord file.
    num_examples: number of (real) examples in it.
    max_seq_length: the length the features were truncated to.
    is_regression: whether label_ids are float scores.
    key: the cache key (hex).
  """
  path: str
  num_examples: int
  max_seq_length: int
  is_regression: bool
  key: str


# --- Feature conversion (in graph). ------------------------------------------


def label_ids_of(examples, label_list, is_regression):
  """Label ids as in the original: the label's position, or the float score.

  Raises:
    UserError: for a label that is not in `label_list`.
  """
  if is_regression:
    return [float(e.label) for e in examples]
  label_map = {label: i for i, label in enumerate(label_list)}
  ids = []
  for e in examples:
    if e.label not in label_map:
      raise UserError("example %s has label %r, not one of %s"
                      % (e.guid, e.label, ", ".join(label_list)))
    ids.append(label_map[e.label])
  return ids


@tf.function(reduce_retracing=True)
def _pack_batch(ids_a, ids_b, max_seq_length, cls_id, sep_id):
  """`pack_pairs` as one graph, traced once per process (scalars as Tensors)."""
  return pack_pairs(ids_a, ids_b, max_seq_length, cls_id, sep_id)


def convert_examples(examples, max_seq_length, tokenizer,
                     batch_size=_CONVERT_BATCH_SIZE):
  """Tokenizes and packs examples in graph, one batch of raw texts at a time.

  A `tf.data` pipeline batches the raw texts; each batch goes through the
  in-graph tokenizer (`tokenizer.tokenize`, a tf.function) and the in-graph
  truncation and packing (`pack_pairs`, a tf.function). Both graphs are
  traced once and reused for every batch and every later call: a `map` over
  the dataset would instead rebuild the tokenizer's kernels (compiling its
  large regular expressions) for each new dataset.

  Args:
    examples: list of InputExample.
    max_seq_length: Python int, at least 3.
    tokenizer: a `tokenization.InGraphTokenizer`.
    batch_size: texts per tokenizer call.

  Returns:
    An iterator of (input_ids, segment_ids), int32 RaggedTensors
    [batch, (length)], the examples in order, without padding.

  Raises:
    UserError: if max_seq_length is below 3.
  """
  if max_seq_length < 3:
    raise UserError("--max_seq_length=%d is too small (at least 3: [CLS] a "
                    "[SEP] b [SEP] needs room)" % max_seq_length)
  texts_a = [e.text_a for e in examples]
  texts_b = [e.text_b if e.text_b is not None else "" for e in examples]
  constants = [tf.constant(v, tf.int32) for v in (
      max_seq_length, tokenizer.cls_id, tokenizer.sep_id)]
  texts = tf.data.Dataset.from_tensor_slices(
      (tf.constant(texts_a, tf.string), tf.constant(texts_b, tf.string)))

  def generate():
    for text_a, text_b in texts.batch(batch_size).prefetch(1):
      yield _pack_batch(tokenizer.tokenize(text_a),
                        tokenizer.tokenize(text_b), *constants)

  return generate()


def _int64_feature(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def write_feature_file(examples, label_list, is_regression, max_seq_length,
                       tokenizer, path):
  """Converts `examples` and writes them to a TFRecord file, atomically.

  Args:
    examples: list of InputExample.
    label_list: the task's labels (None for regression).
    is_regression: whether labels are float scores.
    max_seq_length: Python int.
    tokenizer: a `tokenization.InGraphTokenizer`.
    path: destination; written as a temporary file then renamed.

  Returns:
    Number of records written.
  """
  labels = label_ids_of(examples, label_list, is_regression)
  atomic_io.remove_orphans(path)  # Left by a conversion that was killed.
  tmp_path = "%s.tmp-%d" % (path, os.getpid())
  count = 0
  try:
    with tf.io.TFRecordWriter(tmp_path) as writer:
      for input_ids, segment_ids in convert_examples(
          examples, max_seq_length, tokenizer):
        splits = input_ids.row_splits.numpy()
        ids = input_ids.values.numpy()
        segs = segment_ids.values.numpy()
        for row in range(len(splits) - 1):
          start, end = splits[row], splits[row + 1]
          if is_regression:
            label = tf.train.Feature(
                float_list=tf.train.FloatList(value=[labels[count]]))
          else:
            label = _int64_feature([labels[count]])
          example = tf.train.Example(features=tf.train.Features(feature={
              "input_ids": _int64_feature(ids[start:end]),
              "segment_ids": _int64_feature(segs[start:end]),
              "label_ids": label,
          }))
          writer.write(example.SerializeToString())
          count += 1
    if count != len(examples):
      raise AssertionError("converted %d of %d examples"
                           % (count, len(examples)))
    os.replace(tmp_path, path)
  except (OSError, tf.errors.OpError) as e:
    # No space, no permission: the cache entry is not written.
    message = getattr(e, "strerror", None) or getattr(e, "message", None) or e
    raise UserError("cannot write the feature cache %s: %s"
                    % (path, str(message).splitlines()[0])) from None
  finally:
    if os.path.exists(tmp_path):
      os.unlink(tmp_path)
  return count


# --- The cache. --------------------------------------------------------------


def file_sha256(path):
  """Hex SHA-256 of a file's content."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def examples_fingerprint(examples):
  """Hex SHA-256 of examples' texts and labels (for data not from a file)."""
  digest = hashlib.sha256()
  for e in examples:
    digest.update(json.dumps([e.guid, e.text_a, e.text_b, e.label, e.index],
                             ensure_ascii=False).encode("utf-8"))
    digest.update(b"\n")
  return digest.hexdigest()


def data_file_fingerprint(path):
  """Fingerprint of a source data file: size and content hash."""
  return "file:%d:%s" % (os.path.getsize(path), file_sha256(path))


def _tokenizer_code_fingerprint():
  """The code that turns text into features: the tokenizers and packing."""
  return file_sha256(tokenization.__file__) + file_sha256(packing.__file__)


def cache_key(task_name, split, max_seq_length, vocab_file, do_lower_case,
              source_fingerprint, format_version=FORMAT_VERSION):
  """The cache key of a feature file.

  Args:
    task_name: the task (canonical name).
    split: "train", "dev" or "test".
    max_seq_length: Python int.
    vocab_file: path of the vocabulary; its content is hashed.
    do_lower_case: bool.
    source_fingerprint: string identifying the source data's content (see
      `data_file_fingerprint`, `examples_fingerprint`).
    format_version: the feature format version.

  Returns:
    A 20-character hex string.
  """
  try:
    vocab_hash = file_sha256(vocab_file)
  except OSError as e:
    raise UserError("--vocab_file=%s cannot be read: %s"
                    % (vocab_file, e.strerror or e)) from None
  identity = {
      "task": str(task_name),
      "split": str(split),
      "max_seq_length": int(max_seq_length),
      "vocab_sha256": vocab_hash,
      "do_lower_case": bool(do_lower_case),
      "source": str(source_fingerprint),
      "tokenizer_code": _tokenizer_code_fingerprint(),
      "format_version": int(format_version),
  }
  blob = json.dumps(identity, sort_keys=True).encode("utf-8")
  return hashlib.sha256(blob).hexdigest()[:20]


def cache_paths(cache_dir, split, key):
  """(record file, sidecar) paths of a cache entry."""
  stem = os.path.join(cache_dir, "%s-%s" % (split, key))
  return stem + ".tf_record", stem + ".json"


def load_cached(cache_dir, split, key, is_regression):
  """The cached FeatureFile for `key`, or None if absent or not intact.

  A cache entry is used only if its sidecar exists, names this key, and the
  record file has the size and SHA-256 the sidecar recorded.
  """
  record_path, meta_path = cache_paths(cache_dir, split, key)
  try:
    with open(meta_path, encoding="utf-8") as f:
      meta = json.load(f)
    if (meta.get("key") != key or meta.get("format_version") != FORMAT_VERSION
        or os.path.getsize(record_path) != meta["record_bytes"]
        or file_sha256(record_path) != meta["record_sha256"]):
      return None
    return FeatureFile(path=record_path, num_examples=int(meta["num_examples"]),
                       max_seq_length=int(meta["max_seq_length"]),
                       is_regression=is_regression, key=key)
  except (OSError, ValueError, KeyError, TypeError):
    return None


def build_cache(examples, label_list, is_regression, max_seq_length, tokenizer,
                cache_dir, split, key, description=None):
  """Converts examples into the cache entry for `key` and returns it."""
  try:
    os.makedirs(cache_dir, exist_ok=True)
  except OSError as e:
    raise UserError("cannot create the feature cache %s: %s"
                    % (cache_dir, e.strerror or e)) from None
  record_path, meta_path = cache_paths(cache_dir, split, key)
  count = write_feature_file(examples, label_list, is_regression,
                             max_seq_length, tokenizer, record_path)
  meta = {
      "key": key,
      "format_version": FORMAT_VERSION,
      "split": split,
      "num_examples": count,
      "max_seq_length": max_seq_length,
      "is_regression": bool(is_regression),
      "record_bytes": os.path.getsize(record_path),
      "record_sha256": file_sha256(record_path),
  }
  if description:
    meta["description"] = description
  atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True)
                    + "\n")
  return FeatureFile(path=record_path, num_examples=count,
                     max_seq_length=max_seq_length,
                     is_regression=is_regression, key=key)


# --- Reading features back. --------------------------------------------------


def default_bucket_boundaries(max_seq_length, granularity=16):
  """Bucket boundaries for length bucketing: few shapes, little padding.

  Multiples of `granularity` up to 128, of twice that up to 256, of four
  times that up to 512, ...: 128 / granularity shapes per doubling at most;
  always ending with `max_seq_length`.

  Args:
    max_seq_length: python int, the widest batch.
    granularity: python int dividing 128: 16 (8 shapes up to 128) where
      every new width compiles a whole step (GPU); 8 on CPU, where only
      small element-wise kernels compile and the 6% less padding on GLUE
      pays for it.

  Returns:
    Tuple of increasing python ints.
  """
  if granularity < 1 or 128 % granularity:
    raise ValueError("granularity must divide 128, got %r" % (granularity,))
  candidates = list(range(granularity, 129, granularity))
  width, step = 128, 2 * granularity
  while width < max_seq_length:
    candidates += list(range(width + step, 2 * width + 1, step))
    width, step = 2 * width, 2 * step
  return tuple(b for b in candidates if b < max_seq_length) + (max_seq_length,)


def resolve_buckets(bucket, max_seq_length):
  """Normalises a `bucket` argument (None/False, True or boundaries): None
  (no bucketing: every batch `max_seq_length` wide) or the tuple of widths,
  ending with `max_seq_length`."""
  if bucket is None or bucket is False:
    return None
  if bucket is True:
    return default_bucket_boundaries(max_seq_length)
  bounds = sorted({int(b) for b in bucket if 0 < int(b) < max_seq_length})
  return tuple(bounds) + (max_seq_length,)


def _parse_batch(serialized, example_index, is_real, max_seq_length,
                 is_regression, boundaries):
  """Serialized records [batch] -> the feature dict of one batch."""
  label_dtype = tf.float32 if is_regression else tf.int64
  parsed = tf.io.parse_example(serialized, {
      "input_ids": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64),
      "segment_ids": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64),
      "label_ids": tf.io.FixedLenFeature([], label_dtype,
                                         default_value=tf.zeros([],
                                                                label_dtype)),
  })
  lengths = parsed["input_ids"].row_lengths()  # [batch]
  if boundaries is None:
    width = max_seq_length
    dense_shape = [None, max_seq_length]
  else:
    width = bucket_width(tf.reduce_max(tf.concat([lengths, [0]], 0)),
                         boundaries)
    dense_shape = tf.stack([tf.size(lengths, out_type=tf.int64), width])
  input_ids = tf.cast(parsed["input_ids"], tf.int32).to_tensor(
      0, shape=dense_shape)  # [batch, seq]
  segment_ids = tf.cast(parsed["segment_ids"], tf.int32).to_tensor(
      0, shape=dense_shape)  # [batch, seq]
  input_mask = tf.sequence_mask(lengths, width, dtype=tf.int32)
  label_ids = parsed["label_ids"]
  if not is_regression:
    label_ids = tf.cast(label_ids, tf.int32)
  features = {
      "input_ids": input_ids,  # [batch, seq]
      "input_mask": input_mask,  # [batch, seq]
      "segment_ids": segment_ids,  # [batch, seq]
      "label_ids": label_ids,  # [batch]
      "is_real_example": tf.cast(is_real, tf.int32),  # [batch]
      "example_index": tf.cast(example_index, tf.int32),  # [batch]
  }
  batch = serialized.shape[0]  # Static after batch(drop_remainder=True).
  for name, value in features.items():
    if value.shape.rank == 2:
      value.set_shape([batch, None if boundaries else max_seq_length])
    else:
      value.set_shape([batch])
  return features


def _read_all_records(feature_file):
  """All serialized records of a feature file: tf.string Tensor [n]."""
  n = feature_file.num_examples
  records = next(iter(tf.data.TFRecordDataset(feature_file.path).batch(
      max(n, 1))), tf.constant([], tf.string))
  if int(records.shape[0]) != n:
    raise UserError("feature cache %s holds %d records, its sidecar says %d; "
                    "delete it to rebuild" % (feature_file.path,
                                              records.shape[0], n))
  return records


def _record_lengths(records):
  """int32 [n]: the token count of each serialized record."""
  parsed = tf.io.parse_example(records, {
      "input_ids": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)})
  return tf.cast(parsed["input_ids"].row_lengths(), tf.int32)


def train_dataset(feature_file, batch_size, seed=0, start_step=0,
                  bucket=None, group_batches=None):
  """The training input: shuffled each epoch, repeated, batched.

  The batches are `index_batches` of the feature file's examples (see there:
  the stream depends only on the feature file, `seed`, `batch_size` and
  `group_batches`; `start_step=s` yields exactly the batches s, s+1, ...).

  Args:
    feature_file: a FeatureFile.
    batch_size: examples per batch (the global batch size).
    seed: Python int.
    start_step: number of batches already consumed (when resuming).
    bucket: None/False, True (default boundaries) or a sequence of bucket
      boundaries: each batch is then trimmed to the smallest boundary that
      covers its longest example.
    group_batches: None/0/1 (no grouping) or the window k in batches,
      capped at the batches in one epoch.

  Returns:
    An infinite tf.data.Dataset of feature dicts.
  """
  n = feature_file.num_examples
  if n < 1:
    raise UserError("no training examples in %s" % feature_file.path)
  records = _read_all_records(feature_file)  # [n]
  boundaries = resolve_buckets(bucket, feature_file.max_seq_length)

  def to_features(indices):
    return _parse_batch(tf.gather(records, indices), indices,
                        tf.ones_like(indices), feature_file.max_seq_length,
                        feature_file.is_regression, boundaries)

  grouped = group_batches and int(group_batches) > 1
  dataset = index_batches(n, batch_size, seed, start_step, group_batches,
                          _record_lengths(records) if grouped else None)
  return _parse_and_prefetch(dataset, to_features)


def index_batches(n, batch_size, seed=0, start_step=0, group_batches=None,
                  lengths=None):
  """The training order of n examples: an infinite dataset of int64 [batch]
  index batches.

  Epoch `e` visits the examples in the order of a stateless permutation
  seeded by `(seed, e)`; the epochs follow one another and are cut into
  batches of `batch_size` (a batch may span two epochs; drop_remainder
  semantics: every batch is full). With `group_batches=k`, each run of k
  batches of that stream (a window of k * batch_size examples) is sorted by
  `lengths` and cut again into k batches of similar length, which follow in
  a seeded random order: batches with little padding, every example still
  seen once per epoch (up to the window that straddles two epochs). The
  stream depends only on n, `seed`, `batch_size`, `group_batches` and the
  lengths (not on TensorFlow's global seed), and `start_step=s` yields
  exactly the batches s, s+1, ... of the stream that starts at 0, without
  producing the skipped ones.

  Args:
    n: number of examples (>= 1).
    batch_size: examples per batch.
    seed: Python int.
    start_step: number of batches already consumed (when resuming).
    group_batches: None/0/1 (no grouping) or the window k in batches,
      capped at the batches in one epoch.
    lengths: int [n], each example's length (needed to group).
  """
  if batch_size < 1 or start_step < 0:
    raise ValueError("batch_size must be positive and start_step >= 0")
  window = max(1, min(int(group_batches or 1), n // batch_size))
  first_window, skip_batches = divmod(int(start_step), window)
  first_epoch, offset = divmod(first_window * window * int(batch_size), n)
  seed = int(seed)

  def epoch_order(epoch):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64),
        seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
    return tf.data.Dataset.from_tensor_slices(order)

  dataset = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_order)
  dataset = dataset.skip(offset)
  if window == 1:
    return dataset.batch(batch_size, drop_remainder=True)
  lengths = tf.convert_to_tensor(lengths)  # [n]

  def grouped(window_index, indices):
    # indices: [window * batch]; stable sort, so ties keep stream order.
    indices = tf.gather(indices, tf.argsort(tf.gather(lengths, indices),
                                            stable=True))
    batches = tf.reshape(indices, [window, batch_size])
    order = tf.random.experimental.stateless_shuffle(
        tf.range(window), seed=tf.random.experimental.stateless_fold_in(
            tf.stack([tf.constant(seed, tf.int64), window_index]), 1))
    return tf.data.Dataset.from_tensor_slices(tf.gather(batches, order))

  dataset = dataset.batch(window * batch_size, drop_remainder=True)
  dataset = dataset.enumerate(start=first_window).flat_map(grouped)
  return dataset.skip(skip_batches)


def bucket_width(longest, boundaries):
  """The smallest of `boundaries` (a tuple ending with the widest) that
  covers `longest` (a scalar Tensor), as int64."""
  bounds = tf.constant([boundaries], tf.int64)  # [1, buckets]
  bucket = tf.searchsorted(bounds, [[tf.cast(longest, tf.int64)]],
                           side="left")[0, 0]
  return bounds[0, tf.minimum(bucket, len(boundaries) - 1)]


def _parse_and_prefetch(dataset, to_features):
  """Batches of records -> feature dicts, parsed ahead of the model.

  tf.data's autotuning is off: its model thread sleeps for a period that
  doubles while the iterator lives (up to a minute), and deleting the
  iterator waits for that sleep to end: 18-49 s after an MRPC run's last
  step, measured. Parsing a batch takes milliseconds against the model's
  hundreds; two batches in flight and two ready keep the model fed.
  """
  dataset = dataset.map(to_features, num_parallel_calls=2, deterministic=True)
  dataset = dataset.prefetch(2)
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.with_options(options)


def num_eval_batches(num_examples, batch_size):
  """Batches that cover `num_examples` once (the last one padded)."""
  return int(math.ceil(num_examples / batch_size))


def eval_dataset(feature_file, batch_size, bucket=None):
  """The eval/predict input: every example once, in order, whole batches.

  The examples are followed by padding examples (empty, is_real_example 0,
  example_index -1, label 0) up to a whole number of batches, so every batch
  has `batch_size` rows (static shapes, drop_remainder semantics for TPUs)
  and every real example appears exactly once. With bucketing the order is
  unchanged; only each batch's width is trimmed.

  Args:
    feature_file: a FeatureFile.
    batch_size: examples per batch.
    bucket: as in `train_dataset`.

  Returns:
    A finite tf.data.Dataset of `num_eval_batches` feature dicts.
  """
  n = feature_file.num_examples
  total = num_eval_batches(n, batch_size) * batch_size
  real = tf.data.Dataset.zip((
      tf.data.TFRecordDataset(feature_file.path).take(n),
      tf.data.Dataset.range(n),
      tf.data.Dataset.from_tensors(tf.constant(1, tf.int64)).repeat(n)))
  padding = tf.data.Dataset.from_tensors(
      (tf.constant(b""), tf.constant(-1, tf.int64),
       tf.constant(0, tf.int64))).repeat(total - n)
  boundaries = resolve_buckets(bucket, feature_file.max_seq_length)

  def to_features(serialized, example_index, is_real):
    return _parse_batch(serialized, example_index, is_real,
                        feature_file.max_seq_length,
                        feature_file.is_regression, boundaries)

  dataset = real.concatenate(padding).batch(batch_size, drop_remainder=True)
  return _parse_and_prefetch(dataset, to_features)


def num_train_steps(num_examples, batch_size, num_epochs):
  """Training steps as in the original: int(examples / batch * epochs)."""
  return int(num_examples / batch_size * num_epochs)


# --- One task's data. --------------------------------------------------------


class GlueData(object):
  """The examples, cached features and pipelines of one GLUE task.

  Examples are read (and checked) once per split; features are converted on
  first use and cached under `cache_dir`.
  """

  def __init__(self, processor, data_dir, vocab_file, do_lower_case,
               max_seq_length, cache_dir, tfds_data_dir=None, tokenizer=None):
    """Constructs a GlueData.

    Args:
      processor: a glue_processors.DataProcessor (or a task name).
      data_dir: the task's glue_data folder, or None for tensorflow-datasets.
      vocab_file: WordPiece vocabulary.
      do_lower_case: bool.
      max_seq_length: Python int.
      cache_dir: where the feature files go (e.g. <output_dir>/features).
      tfds_data_dir: tensorflow-datasets data folder (None: its default).
      tokenizer: an InGraphTokenizer to use (default: built on first need).
    """
    if isinstance(processor, str):
      processor = glue_processors.get_processor(processor)
    self.processor = processor
    self.data_dir = data_dir
    self.vocab_file = vocab_file
    self.do_lower_case = bool(do_lower_case)
    self.max_seq_length = int(max_seq_length)
    self.cache_dir = cache_dir
    self.tfds_data_dir = tfds_data_dir
    self._tokenizer = tokenizer
    self._examples = {}
    self._keys = {}
    self._feature_files = {}

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      self._tokenizer = tokenization.InGraphTokenizer(self.vocab_file,
                                                      self.do_lower_case)
    return self._tokenizer

  def examples(self, split):
    """The InputExamples of `split` (read once)."""
    if split not in self._examples:
      self._examples[split] = self.processor.get_examples(
          split, self.data_dir, self.tfds_data_dir)
      if not self._examples[split]:
        where = (self.processor.data_file(split, self.data_dir)
                 if self.data_dir else "tensorflow-datasets")
        raise UserError("the %s %s set is empty (%s)"
                        % (self.processor.name, split, where))
    return self._examples[split]

  def cache_key(self, split):
    """The feature cache key of `split`."""
    if split not in self._keys:
      if self.data_dir:
        source = data_file_fingerprint(
            self.processor.data_file(split, self.data_dir))
      else:
        source = "examples:" + examples_fingerprint(self.examples(split))
      self._keys[split] = cache_key(
          getattr(self.processor, "cache_identity", self.processor.name),
          split, self.max_seq_length, self.vocab_file, self.do_lower_case,
          source)
    return self._keys[split]

  def _cached(self, split):
    return load_cached(self.cache_dir, split, self.cache_key(split),
                       self.processor.is_regression)

  def num_examples(self, split):
    """Number of real examples of `split` (checks the data if not cached)."""
    if split in self._feature_files:
      return self._feature_files[split].num_examples
    cached = self._cached(split)
    if cached is not None:
      self._feature_files[split] = cached
      return cached.num_examples
    return len(self.examples(split))

  def feature_file(self, split):
    """The FeatureFile of `split`, converting and caching on first use."""
    if split not in self._feature_files:
      cached = self._cached(split)
      if cached is None:
        cached = build_cache(
            self.examples(split), self.processor.get_labels(),
            self.processor.is_regression, self.max_seq_length, self.tokenizer,
            self.cache_dir, split, self.cache_key(split),
            description="%s %s" % (self.processor.name, split))
      self._feature_files[split] = cached
    return self._feature_files[split]

  def train_dataset(self, batch_size, seed=0, start_step=0, bucket=None,
                    group_batches=None):
    """See `train_dataset` (module level); uses the train split."""
    return train_dataset(self.feature_file(glue_processors.TRAIN), batch_size,
                         seed=seed, start_step=start_step, bucket=bucket,
                         group_batches=group_batches)

  def eval_dataset(self, split, batch_size, bucket=None):
    """See `eval_dataset` (module level); for "dev" or "test"."""
    return eval_dataset(self.feature_file(split), batch_size, bucket=bucket)
