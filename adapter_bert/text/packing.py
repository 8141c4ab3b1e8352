"""Packing wordpieces as BERT's inputs: `[CLS] a [SEP] b [SEP]`, in graph.

The truncation is google-research/bert's (`_truncate_seq_pair`, longest
first), in closed form, so that a batch of raw texts packs in one graph: the
input pipeline, the exported SavedModel and the model's preprocessor all
call `pack_pairs`.
"""

import tensorflow as tf


def truncated_lengths(len_a, len_b, max_seq_length):
  """Lengths of a and b after google-research/bert's truncation, in graph.

  For a pair (`len_b > 0`) this is the closed form of `_truncate_seq_pair`
  with `max_length = max_seq_length - 3`, which pops one token at a time from
  the longer sequence (from b when they are equal) until the total fits:
  a keeps `min(len_a, max(max_length - len_b, ceil(max_length / 2)))` tokens
  and b the rest of the budget, at most `len_b`. A single sentence
  (`len_b == 0`, which the original treats as "no tokens_b") keeps
  `min(len_a, max_seq_length - 2)` tokens.

  Args:
    len_a: int32 or int64 Tensor [batch], wordpieces of text a.
    len_b: Tensor [batch] of len_a's dtype, wordpieces of text b (0: no
      text b).
    max_seq_length: int or integer scalar Tensor, at least 3.

  Returns:
    (keep_a, keep_b), Tensors [batch] of len_a's dtype.
  """
  max_seq_length = tf.cast(max_seq_length, len_a.dtype)
  budget = max_seq_length - 3
  half_up = (budget + 1) // 2
  has_b = len_b > 0
  pair_a = tf.minimum(len_a, tf.maximum(budget - len_b, half_up))
  single_a = tf.minimum(len_a, max_seq_length - 2)
  keep_a = tf.where(has_b, pair_a, single_a)
  keep_b = tf.where(has_b, tf.minimum(len_b, budget - keep_a),
                    tf.zeros_like(len_b))
  return keep_a, keep_b


def pack_pairs(ids_a, ids_b, max_seq_length, cls_id, sep_id):
  """Truncates and packs wordpiece ids as `[CLS] a [SEP] b [SEP]`, in graph.

  Each output position is selected from the padded inputs by its index (no
  ragged concatenation: along axis 1 it runs integer ops that TensorFlow's
  oneDNN rewrite rejects with an error line on CPUs without AVX-512, for
  int64 and int32 row splits alike).

  Args:
    ids_a: int32 RaggedTensor [batch, (la)], wordpieces of text a.
    ids_b: int32 RaggedTensor [batch, (lb)], wordpieces of text b (empty rows
      for single sentences: then no second [SEP]).
    max_seq_length: Python int.
    cls_id, sep_id: ids of [CLS] and [SEP].

  Returns:
    (input_ids, segment_ids): int32 RaggedTensors [batch, (<= max_seq_length)]
    without padding.
  """
  len_a = ids_a.row_lengths()  # [batch]
  len_b = ids_b.row_lengths()  # [batch]
  keep_a, keep_b = truncated_lengths(len_a, len_b, max_seq_length)
  has_b = tf.cast(len_b > 0, len_b.dtype)
  lengths = keep_a + keep_b + 2 + has_b  # [batch]
  # One zero column each, so that the gathers below have a column to read
  # when every row of a batch is empty.
  dense_a = tf.pad(ids_a.to_tensor(), [[0, 0], [0, 1]])  # [batch, max_a + 1]
  dense_b = tf.pad(ids_b.to_tensor(), [[0, 0], [0, 1]])  # [batch, max_b + 1]
  width = tf.maximum(tf.reduce_max(lengths), 0)
  ka = keep_a[:, tf.newaxis]  # [batch, 1]
  kb = keep_b[:, tf.newaxis]  # [batch, 1]
  hb = has_b[:, tf.newaxis]  # [batch, 1]
  start_b = ka + 2  # [batch, 1]
  pos = (tf.range(width, dtype=lengths.dtype)[tf.newaxis, :]
         + tf.zeros_like(ka))  # [batch, width]

  def take(dense, first):
    """dense[row, pos - first], the index clipped into the row."""
    last = tf.shape(dense, lengths.dtype)[1] - 1
    return tf.gather(dense, tf.clip_by_value(pos - first, 0, last),
                     batch_dims=1)  # [batch, width]

  in_a = (pos >= 1) & (pos <= ka)
  in_b = (pos >= start_b) & (pos < start_b + kb)
  is_sep = (pos == ka + 1) | ((pos == start_b + kb) & (hb > 0))
  dense_ids = tf.where(
      pos == 0, tf.cast(cls_id, tf.int32),
      tf.where(in_a, take(dense_a, 1), tf.where(
          in_b, take(dense_b, start_b),
          tf.where(is_sep, tf.cast(sep_id, tf.int32), 0))))
  dense_segments = tf.cast(pos >= start_b, tf.int32)  # [batch, width]
  input_ids = tf.RaggedTensor.from_tensor(dense_ids, lengths=lengths)
  segment_ids = tf.RaggedTensor.from_tensor(dense_segments, lengths=lengths)
  return input_ids, segment_ids
