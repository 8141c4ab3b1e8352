"""Frozen activations computed once ("save the encoder activation once and
reuse it while training", Basirat).

When every trained part reads a frozen encoder's hidden states and nothing
below them trains (the layer-attention adapter: the encoder runs frozen,
in inference mode, its states cut from the gradient), those states are the
same for an example at every epoch. They are computed once, in inference
mode, stored beside the feature cache, and every training batch then
reads its examples' states instead of running the encoder.

Storage, for a feature file of n examples and T real tokens in all:

  <cache_dir>/frozen-<key>.npy   [T, L', H] (float32, or float16 on
                                 request): each example's real tokens only,
                                 one after the other, the L' states the
                                 adapter reads at each token;
  <cache_dir>/frozen-<key>.json  the sidecar: key, n, T, offsets, layers,
                                 dtype, and what the key was made of.

The key hashes the feature file's own key (data, vocabulary, sequence
length, ...), the encoder's config, a fingerprint of its weights, the states
read and the dtype: a change of model, data or states never reuses stale
activations. Both files are written under temporary names and renamed into
place (array first, sidecar last), so a kill leaves no entry that looks
complete.
"""

import functools
import hashlib
import json
import os
import tempfile
import time

from absl import logging
import numpy as np
import tensorflow as tf

from adapter_bert.storage import atomic_io
from adapter_bert.errors import UserError
from adapter_bert.data import input_pipeline
from adapter_bert.model import adapter_io
from adapter_bert.adapters import composition

# Bump when what is stored, or its meaning, changes.
FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
FEATURE = "frozen_states"  # The features' key: [batch, seq, L', H].


def _encoder_layer(model, setup=None):
  """The active setup's encoder-level adapter layer (layer attention)."""
  setup = setup or model.active_setup()
  hook = model.bert.encoder_output
  if setup.several or not hook.is_active(setup):
    names = ", ".join(setup.adapter_names) or "none"
    raise UserError(
        "frozen activations need an adapter that reads the frozen encoder "
        "(layer_attention) active alone; the active adapters are %s" % names)
  layer, = hook.branch_layers(setup.branches[0])
  return layer


class _FeatureFileSource:
  """A GLUE feature file as a source of frozen activations."""

  def __init__(self, feature_file):
    self.key = feature_file.key
    self.num_examples = feature_file.num_examples
    self.max_seq_length = feature_file.max_seq_length
    self.path = feature_file.path
    self._feature_file = feature_file

  @functools.cached_property
  def lengths(self):
    """[n] int64 real tokens per example (read only when states are built:
    reusing a stored entry needs just the key)."""
    records = input_pipeline._read_all_records(self._feature_file)  # pylint: disable=protected-access
    return input_pipeline._record_lengths(records).numpy().astype(  # pylint: disable=protected-access
        np.int64)

  def eval_dataset(self, batch_size, bucket):
    return input_pipeline.eval_dataset(self._feature_file, batch_size,
                                       bucket=bucket)


def _source(data):
  """A feature file, or an object with key, num_examples, max_seq_length,
  lengths (int [n]) and eval_dataset(batch_size, bucket) (feature dicts
  with example_index, -1 for padding) such as data.ner_pipeline's windows."""
  if isinstance(data, input_pipeline.FeatureFile):
    return _FeatureFileSource(data)
  return data


def cache_key(model, feature_file, dtype, batch_size=32, bucket=True,
              policy=None):
  """(hex key, its parts): what the stored states depend on.

  The shapes and kernels the states are computed with are part of it: the
  last bits depend on them, and states computed in the training batches'
  shapes with the training step's kernels equal, bit for bit, what a run
  without stored states computes (see `build_or_load`).
  """
  source = _source(feature_file)
  layer = _encoder_layer(model)
  base = model.view(composition.Branch()).checkpoint_name_map()
  parts = {
      "format_version": FORMAT_VERSION,
      "features": source.key,
      "bert_config": model.config.to_dict(),
      "base_fingerprint": adapter_io.fingerprint_values(
          (name, variable.numpy) for name, variable in base.items())[0],
      "layers": list(layer.read_layers),
      "dtype": dtype,
      "computed_in": {"batch_size": int(batch_size), "buckets": list(
          input_pipeline.resolve_buckets(bucket, source.max_seq_length) or
          [])},
      "kernels": (None if policy is None else
                  {"fused": policy.fused, "cpu_host": policy.cpu_host}),
  }
  text = json.dumps(parts, sort_keys=True).encode("utf-8")
  return hashlib.sha256(text).hexdigest(), parts


def paths(cache_dir, key):
  stem = os.path.join(cache_dir, "frozen-%s" % key[:16])
  return stem + ".npy", stem + ".json"


class FrozenActivations:
  """One feature file's stored states, read per batch."""

  def __init__(self, array, offsets, lengths, num_states, hidden):
    self.array = array  # [T, L', H], memory-mapped.
    self.offsets = offsets  # [n] int64: each example's first row.
    self.lengths = lengths  # [n] int64: its real tokens.
    self.num_states = num_states
    self.hidden = hidden

  @property
  def nbytes(self):
    return int(self.array.nbytes)

  def gather(self, example_index, width):
    """[batch, width, L', H] float32 of the examples (zeros at padding)."""
    index = np.asarray(example_index)
    width = int(width)
    out = np.zeros((len(index), width, self.num_states, self.hidden),
                   np.float32)
    for row, i in enumerate(index):
      if i < 0:
        continue  # A padding example.
      n = min(int(self.lengths[i]), width)
      start = int(self.offsets[i])
      out[row, :n] = self.array[start:start + n]
    return out

  def attach(self, dataset):
    """Adds each batch's states to a dataset of feature dicts (which carry
    `example_index` and `input_mask`), under FEATURE."""
    num_states, hidden = self.num_states, self.hidden

    def add(features):
      states = tf.numpy_function(
          self.gather, [features["example_index"],
                        tf.shape(features["input_mask"])[1]], tf.float32,
          stateful=False)
      batch = features["input_mask"].shape[0]
      states.set_shape([batch, features["input_mask"].shape[1], num_states,
                        hidden])
      return dict(features, **{FEATURE: states})

    return dataset.map(add, num_parallel_calls=2, deterministic=True)


def load(cache_dir, key):
  """The stored entry for `key`, or None when absent or not intact."""
  array_path, meta_path = paths(cache_dir, key)
  if not (os.path.isfile(array_path) and os.path.isfile(meta_path)):
    return None
  try:
    with open(meta_path, encoding="utf-8") as f:
      meta = json.load(f)
    if meta.get("key") != key:
      return None
    array = np.load(array_path, mmap_mode="r")
  except (OSError, ValueError):
    return None
  if tuple(array.shape) != (meta["total_tokens"], len(meta["layers"]),
                            meta["hidden"]):
    return None
  lengths = np.asarray(meta["lengths"], np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  return FrozenActivations(array, offsets, lengths, len(meta["layers"]),
                           meta["hidden"])


def build_or_load(model, feature_file, cache_dir, dtype="float32",
                  batch_size=32, bucket=True, policy=None):
  """The frozen states of every example of `feature_file`, computed once.

  Args:
    model: a BertAdapterModel whose active adapter reads the frozen encoder.
    feature_file: an input_pipeline.FeatureFile, or a source of examples as
      NerData.frozen_source gives (see `_source`).
    cache_dir: where the entry goes (the feature cache's directory).
    dtype: "float32" (the states as computed) or "float16" (half the disk).
    batch_size: examples per forward pass while computing.
    bucket: the length buckets of those passes (as input_pipeline's
      `bucket`). Give the training run's batch size and buckets for states
      equal, to the last bit, to what the run would compute itself: without
      length buckets, every training batch then has the shape the states
      were computed in (with buckets, an example's width in a training batch
      depends on its neighbours, so the last bits may differ).
    policy: the kernels of the training step (Trainer.policy), for the same
      reason; None: the model's default kernels.

  Returns:
    A FrozenActivations.

  Raises:
    UserError: for a setup without such an adapter, a bad dtype, or a cache
      that cannot be written.
  """
  if dtype not in DTYPES:
    raise UserError("frozen activations dtype %r is not one of %s"
                    % (dtype, ", ".join(DTYPES)))
  source = _source(feature_file)
  key, parts = cache_key(model, source, dtype, batch_size, bucket, policy)
  found = load(cache_dir, key)
  if found is not None:
    logging.info("Frozen activations: reusing %s (%.1f MB)",
                 paths(cache_dir, key)[0], found.nbytes / 1e6)
    return found
  layer = _encoder_layer(model)
  setup = model.active_setup()
  h = model.config.hidden_size
  num_states = len(layer.read_layers)
  t0 = time.time()
  dataset = source.eval_dataset(batch_size, bucket)

  @tf.function(reduce_retracing=True)
  def forward(input_ids, input_mask, segment_ids):
    return model.bert.frozen_states(input_ids, input_mask, segment_ids,
                                    setup, policy)

  lengths = np.asarray(source.lengths, np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  total = int(lengths.sum())
  array_path, meta_path = paths(cache_dir, key)
  try:
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".frozen-", suffix=".npy",
                               dir=cache_dir)
    os.close(fd)
    try:
      out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype,
                                      shape=(total, num_states, h))
      for features in dataset:
        states = forward(features["input_ids"], features["input_mask"],
                         features["segment_ids"]).numpy()  # [b, seq, L', H]
        for row, i in enumerate(features["example_index"].numpy()):
          if i >= 0:  # Not a padding example: its real tokens.
            n = lengths[i]
            out[offsets[i]:offsets[i] + n] = states[row, :n]
      out.flush()
      del out
      with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
      os.replace(tmp, array_path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
    meta = dict(parts, key=key, num_examples=source.num_examples,
                total_tokens=total, hidden=h,
                lengths=[int(n) for n in lengths])
    atomic_io.atomic_write_text(meta_path, json.dumps(meta) + "\n")
  except OSError as e:
    raise UserError("cannot write the frozen activations %s: %s"
                    % (array_path, e.strerror or e)) from None
  built = load(cache_dir, key)
  logging.info("Frozen activations: computed %d examples (%d tokens, %d "
               "states of %d) in %.1f s; %s holds %.1f MB (%s)",
               source.num_examples, total, num_states, h,
               time.time() - t0, array_path, built.nbytes / 1e6, dtype)
  return built
