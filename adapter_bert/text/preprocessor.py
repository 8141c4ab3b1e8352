"""Raw text to the model's features: the preprocessor of keras-hub's tasks.

`BertPreprocessor` tokenizes in the graph (`tokenization.InGraphTokenizer`)
and packs `[CLS] a [SEP] b [SEP]` with the original truncation
(`packing.pack_pairs`), exactly as the input pipeline does for training and
the exported SavedModel does for serving, so `model.predict(["a sentence"])`
gives the logits those paths give.
"""

import os

import numpy as np
import tensorflow as tf

from adapter_bert.errors import UserError
from adapter_bert.text import packing
from adapter_bert.text import tokenization


def _strings(texts, what):
  """A tf.string [batch] from a str, a list/tuple/array of str or a Tensor."""
  if isinstance(texts, str):
    texts = [texts]
  if isinstance(texts, tf.Tensor):
    if texts.dtype != tf.string:
      raise UserError("%s must be strings, got a %s tensor" % (what,
                                                               texts.dtype))
    return tf.reshape(texts, [-1])
  values = list(texts)
  bad = [v for v in values if not isinstance(v, (str, bytes))]
  if bad:
    raise UserError("%s must be strings, got %r" % (what, bad[0]))
  return tf.constant(values, tf.string)


def is_raw_text(x):
  """Whether `x` is raw text: a str, a list/tuple/array of str, a pair of
  such lists (text_a, text_b), or a tf.string tensor."""
  if isinstance(x, str):
    return True
  if isinstance(x, tf.Tensor):
    return x.dtype == tf.string
  if isinstance(x, np.ndarray):
    return x.dtype.kind in ("U", "S", "O") and x.size > 0 and isinstance(
        x.flat[0], (str, bytes))
  if isinstance(x, (list, tuple)) and x:
    if all(isinstance(v, (str, bytes)) for v in x):
      return True
    return (isinstance(x, tuple) and len(x) == 2
            and all(is_raw_text(part) and not isinstance(part, str)
                    for part in x))
  return False


def check_settings(vocab_file, max_seq_length):
  """Raises UserError for a missing vocabulary or a max_seq_length below 3."""
  if not os.path.isfile(vocab_file):
    raise UserError("vocabulary %s not found" % vocab_file)
  if int(max_seq_length) < 3:
    raise UserError("max_seq_length must be at least 3 ([CLS] a [SEP]), "
                    "got %r" % (max_seq_length,))


class BertPreprocessor:
  """Turns raw texts (or pairs) into int32 `input_ids`, `input_mask` and
  `segment_ids` [batch, seq], seq the longest packed example of the batch.

  Attributes:
    tokenizer: the tokenization.InGraphTokenizer.
    vocab_file, do_lower_case, max_seq_length: how text becomes features.
  """

  def __init__(self, vocab_file, do_lower_case=True, max_seq_length=128):
    """Args:
      vocab_file: the base model's WordPiece vocabulary.
      do_lower_case: lower-case and strip accents (uncased models).
      max_seq_length: pairs are truncated, longest first, to this length.

    Raises:
      UserError: for a missing vocabulary or a max_seq_length below 3.
    """
    check_settings(vocab_file, max_seq_length)
    self.vocab_file = vocab_file
    self.do_lower_case = bool(do_lower_case)
    self.max_seq_length = int(max_seq_length)
    self.tokenizer = tokenization.InGraphTokenizer(vocab_file,
                                                   self.do_lower_case)

  def features(self, text_a, text_b):
    """In graph: tf.string [batch] texts -> dense int32 features [batch, seq]."""
    input_ids, segment_ids = packing.pack_pairs(
        self.tokenizer.tokenize(text_a), self.tokenizer.tokenize(text_b),
        self.max_seq_length, self.tokenizer.cls_id, self.tokenizer.sep_id)
    return {
        "input_ids": input_ids.to_tensor(0),  # [batch, seq]
        "input_mask": tf.ones_like(input_ids).to_tensor(0),  # [batch, seq]
        "segment_ids": segment_ids.to_tensor(0),  # [batch, seq]
    }

  def __call__(self, x):
    """Features of raw text: texts, or a pair (texts_a, texts_b).

    Raises:
      UserError: when x is not text, or a pair's parts differ in length.
    """
    if isinstance(x, tuple) and len(x) == 2 and not isinstance(x[0], str):
      text_a, text_b = _strings(x[0], "text_a"), _strings(x[1], "text_b")
      if int(tf.size(text_a)) != int(tf.size(text_b)):
        raise UserError("text pairs: %d first texts but %d second texts"
                        % (int(tf.size(text_a)), int(tf.size(text_b))))
    else:
      text_a = _strings(x, "texts")
      text_b = tf.fill(tf.shape(text_a), "")
    return self.features(text_a, text_b)
