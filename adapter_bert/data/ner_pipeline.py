"""CoNLL sentences -> word-piece windows -> `tf.data` pipelines, and back.

Each sentence becomes one or more windows (data.conll.windows):
`[CLS] pieces [SEP]`, padded to max_seq_length; a word's IOB2 label id on
its first piece, -1 elsewhere (not scored). Every window also carries its
sentence's index and, per piece, whether it predicts that word, so that
predictions map back to exactly one label per word.
"""

import os

import numpy as np
import tensorflow as tf

from adapter_bert.data import conll
from adapter_bert.data import glue_processors
from adapter_bert.data import input_pipeline
from adapter_bert.text import tokenization
from adapter_bert.errors import UserError

SPLIT_FILES = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}
TFDS_SPLITS = {"train": "train", "dev": "dev", "test": "test"}


def tfds_sentences(split, tfds_data_dir=None):
  """CoNLL-2003 sentences from tensorflow-datasets (its IOB2 tags).

  Raises:
    UserError: when tensorflow-datasets cannot provide them (offline: it
      downloads the data), naming --data_dir as the way out.
  """
  rows, info = glue_processors.load_tfds(
      "conll2003", TFDS_SPLITS[split], tfds_data_dir,
      "--data_dir=<folder with train.txt and valid.txt>")
  names = list(info.features["ner"].feature.names)
  sentences = []
  for i, row in enumerate(rows):
    words = [w.decode("utf-8") if isinstance(w, bytes) else str(w)
             for w in row["tokens"]]
    tags = [names[int(t)] for t in row["ner"]]
    if words:
      sentences.append(conll.Sentence(words, tags, i + 1))
  if not sentences:
    raise UserError("tensorflow-datasets conll2003 %s holds no sentences"
                    % TFDS_SPLITS[split])
  return sentences


class NerData:
  """The CoNLL files of one run, as windows.

  Args:
    data_dir: holds train.txt and valid.txt (test.txt optional).
    vocab_file, do_lower_case, max_seq_length: as the model's.
    predict_file: a file to predict (`--predict_file`), the "test" split.
  """

  def __init__(self, data_dir, vocab_file, do_lower_case, max_seq_length,
               predict_file=None, tfds_data_dir=None):
    self.data_dir = data_dir
    self.tfds_data_dir = tfds_data_dir
    self.max_seq_length = int(max_seq_length)
    self.vocab_file = vocab_file
    self.do_lower_case = do_lower_case
    self.tokenizer = tokenization.FullTokenizer(vocab_file, do_lower_case)
    self.predict_file = predict_file
    self._sentences = {}
    self._windows = {}
    self._gold = {}
    self.labels = None

  def from_tfds(self, split):
    """Whether `split` comes from tensorflow-datasets (no --data_dir)."""
    return not self.data_dir and not (split == "test" and self.predict_file)

  def path(self, split):
    if split == "test" and self.predict_file:
      return self.predict_file
    if not self.data_dir:
      return "tensorflow-datasets conll2003 %s" % TFDS_SPLITS[split]
    return os.path.join(self.data_dir, SPLIT_FILES[split])

  def sentences(self, split):
    if split not in self._sentences:
      if self.from_tfds(split):
        self._sentences[split] = tfds_sentences(split, self.tfds_data_dir)
      else:
        path = self.path(split)
        if not os.path.isfile(path):
          raise UserError("%s: file not found" % path)
        self._sentences[split] = conll.read_conll(path)
    return self._sentences[split]

  def scheme(self, split):
    return conll.detect_scheme(s.tags for s in self.sentences(split))

  def set_labels(self, labels):
    """The IOB2 label list (from the training file, or a trained head)."""
    self.labels = list(labels)
    self._ids = {label: i for i, label in enumerate(self.labels)}

  def check_labels(self, split):
    """Raises UserError for a tag of `split` outside the label list."""
    for sentence in self.sentences(split):
      for i, tag in enumerate(conll.to_iob2(sentence.tags)):
        if tag not in self._ids:
          raise UserError(
              "%s line %d: tag %r is not one of the labels trained on (%s)"
              % (self.path(split), sentence.line + i, sentence.tags[i],
                 ", ".join(self.labels)))

  def windows(self, split):
    """(arrays dict, windows list, sentence index per window)."""
    if split not in self._windows:
      tokenize = self.tokenizer.tokenize
      vocab = self.tokenizer.vocab
      unk = vocab.get("[UNK]", 0)
      ids, masks, labels, sentence_of, predicts, all_windows = (
          [], [], [], [], [], [])
      scored = self.has_gold(split)
      for s_index, sentence in enumerate(self.sentences(split)):
        tags = conll.to_iob2(sentence.tags)
        for window in conll.windows(sentence.words, tokenize,
                                    self.max_seq_length):
          pieces = ["[CLS]"] + window.pieces + ["[SEP]"]
          row = [vocab.get(p, unk) for p in pieces]
          pad = self.max_seq_length - len(row)
          ids.append(row + [0] * pad)
          masks.append([1] * len(row) + [0] * pad)
          label_row = [-1]
          for word, keep in zip(window.word_of_piece, window.predicts):
            label_row.append(self._ids[tags[word]] if word >= 0 and scored
                             else -1)
          labels.append(label_row + [-1] * (pad + 1))
          predicts.append([False] + list(window.predicts) + [False] * (
              pad + 1))
          sentence_of.append(s_index)
          all_windows.append(window)
      arrays = {
          "input_ids": np.array(ids, np.int32).reshape(-1,
                                                       self.max_seq_length),
          "input_mask": np.array(masks, np.int32).reshape(
              -1, self.max_seq_length),
          "label_ids": np.array(labels, np.int32).reshape(
              -1, self.max_seq_length),
      }
      arrays["segment_ids"] = np.zeros_like(arrays["input_ids"])
      self._windows[split] = (arrays, all_windows,
                              np.array(sentence_of, np.int64))
    return self._windows[split]

  def _columns(self, split):
    if self.from_tfds(split):
      return 4  # Tokens and their tags.
    with open(self.path(split), encoding="utf-8") as f:
      for line in f:
        parts = line.split()
        if parts and parts[0] != conll.DOCSTART:
          return len(parts)
    return 1

  def has_gold(self, split):
    """Whether the split's file has tags (a column after the token)."""
    if split not in self._gold:
      self._gold[split] = self._columns(split) > 1
    return self._gold[split]

  def num_windows(self, split):
    return len(self.windows(split)[1])

  def lengths(self, split):
    """int32 [windows]: each window's real pieces ([CLS] and [SEP] in)."""
    return self.windows(split)[0]["input_mask"].sum(axis=1).astype(np.int32)

  def train_dataset(self, batch_size, seed=0, start_step=0, bucket=None,
                    group_batches=None):
    """Shuffled each epoch (stateless, by seed and epoch), repeated, in
    whole batches; `start_step` skips the batches already trained. As
    run_classifier's (input_pipeline.index_batches): `group_batches` sorts
    each run of that many batches by length, and `bucket` (True or
    boundaries) trims each batch to the smallest boundary that covers its
    longest window."""
    arrays, _, _ = self.windows("train")
    n = len(arrays["input_ids"])
    if n < 1:
      raise UserError("no training sentences in %s" % self.path("train"))
    grouped = group_batches and int(group_batches) > 1
    dataset = input_pipeline.index_batches(
        n, batch_size, seed, start_step, group_batches,
        self.lengths("train") if grouped else None)
    return self._batches(dataset, arrays, bucket)

  def _batches(self, index_batches, arrays, bucket):
    """Index batches -> feature dicts (trimmed to buckets with `bucket`)."""
    boundaries = input_pipeline.resolve_buckets(
        bucket, self.max_seq_length)
    tensors = {k: tf.constant(v) for k, v in arrays.items()}

    def gather(idx):
      features = {k: tf.gather(v, tf.maximum(idx, 0))
                  for k, v in tensors.items()}
      if boundaries is not None:
        width = input_pipeline.bucket_width(
            tf.reduce_max(tf.reduce_sum(features["input_mask"], 1)),
            boundaries)
        features = {k: v[:, :width] if v.shape.rank == 2 else v
                    for k, v in features.items()}
      features["example_index"] = tf.cast(idx, tf.int32)
      return features

    return index_batches.map(gather).prefetch(2)

  def eval_dataset(self, split, batch_size, bucket=None):
    """Every window once, then empty ones up to whole batches
    (example_index -1, is_real_example 0); with `bucket`, in order of
    length (each batch trimmed), else in file order."""
    arrays, _, _ = self.windows(split)
    n = len(arrays["input_ids"])
    total = -(-n // batch_size) * batch_size
    order = np.arange(n)
    if bucket:
      order = np.argsort(self.lengths(split), kind="stable")
    index = np.concatenate([order, -np.ones(total - n, np.int64)])
    dataset = tf.data.Dataset.from_tensor_slices(
        index.astype(np.int64)).batch(batch_size, drop_remainder=True)
    # Padding rows read window 0 and are then blanked: no label, no mask.
    dataset = self._batches(dataset, arrays, bucket)

    def blank(features):
      real = features["example_index"] >= 0  # [batch]
      out = {}
      for k, v in features.items():
        if k == "example_index" or v.shape.rank != 2:
          out[k] = v
        else:
          fill = -1 if k == "label_ids" else 0
          out[k] = tf.where(real[:, None], v, tf.cast(fill, v.dtype))
      out["is_real_example"] = tf.cast(real, tf.int32)
      return out

    return dataset.map(blank)

  def frozen_source(self, split):
    """What data.frozen_activations needs to store a split's frozen
    states: key, num_examples, lengths, eval_dataset(batch_size)."""
    return _WindowSource(self, split)

  def decode(self, split, logits, example_index):
    """Predicted tags per sentence, in the split's scheme.

    Args:
      logits: [windows (+ padding), seq, labels] from the eval dataset.
      example_index: the windows' indices (-1 for padding).
    """
    _, all_windows, sentence_of = self.windows(split)
    per_window = {}
    for row, index in enumerate(example_index):
      if index >= 0:
        ids = np.argmax(logits[row], axis=-1)[1:]  # After [CLS].
        per_window[int(index)] = [self.labels[i] for i in ids]
    sentences = self.sentences(split)
    grouped = [[] for _ in sentences]
    for index, window in enumerate(all_windows):
      grouped[sentence_of[index]].append((window, per_window[index]))
    scheme = self.scheme(split) if self.has_gold(split) else "IOB2"
    out = []
    for sentence, pairs in zip(sentences, grouped):
      tags = conll.words_from_windows(len(sentence.words),
                                      [w for w, _ in pairs],
                                      [p for _, p in pairs])
      out.append(conll.in_scheme(_valid_iob2(tags), scheme))
    return out


def _valid_iob2(tags):
  """IOB2 from predicted tags (an I- after O or another type becomes B-)."""
  return conll.to_iob2(tags)


class _WindowSource:
  """A split's windows as a source of frozen activations."""

  def __init__(self, data, split):
    self._data = data
    self._split = split
    self.num_examples = data.num_windows(split)
    self.lengths = data.lengths(split).astype(np.int64)
    self.max_seq_length = data.max_seq_length
    self.path = data.path(split)

  @property
  def key(self):
    """What the windows depend on: the split's file (or tfds), the
    vocabulary, casing, window length, labels and the tokenizer's code."""
    import hashlib  # pylint: disable=g-import-not-at-top
    import json  # pylint: disable=g-import-not-at-top
    data = self._data
    parts = {
        "source": (data.path(self._split) if data.from_tfds(self._split)
                   else input_pipeline.file_sha256(data.path(self._split))),
        "vocab": input_pipeline.file_sha256(data.vocab_file),
        "do_lower_case": data.do_lower_case,
        "max_seq_length": data.max_seq_length,
        "labels": data.labels,
        "tokenizer": input_pipeline._tokenizer_code_fingerprint(),  # pylint: disable=protected-access
        "windows": "ner-1",
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode(
        "utf-8")).hexdigest()

  def eval_dataset(self, batch_size, bucket):
    return self._data.eval_dataset(self._split, batch_size, bucket=bucket)
