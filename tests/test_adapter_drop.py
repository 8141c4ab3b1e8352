"""AdapterDrop's training recipe: each step is the step of a model whose
k lowest layers' adapters are skipped (k drawn from the seed and the step),
the variables there left untouched, moments included; in the command
line's Trainer and in Keras fit."""

import numpy as np
import tensorflow as tf

from adapter_bert.storage import checkpoint_io
import tiny_fixtures
from adapter_bert.model import adapter_drop


def _batches(n=4):
  rng = np.random.default_rng(1)
  out = []
  for _ in range(n):
    lengths = rng.integers(3, 11, size=8)
    mask = (np.arange(10)[None, :] < lengths[:, None]).astype(np.int32)
    out.append({
        "input_ids": tf.constant((rng.integers(1, 40, (8, 10)) * mask
                                  ).astype(np.int32)),
        "input_mask": tf.constant(mask),
        "segment_ids": tf.constant(np.zeros((8, 10), np.int32)),
        "label_ids": tf.constant(rng.integers(0, 2, 8).astype(np.int32))})
  return out


def _values(model, optimizer_slots=()):
  out = {n: v.numpy() for n, v in checkpoint_io.checkpoint_name_map(
      model).items()}
  for i, slot in enumerate(optimizer_slots):
    out["slot_%d" % i] = slot.numpy()
  return out


def _skipped(name, k):
  """Whether variable `name` sits where k skipped layers take adapters out
  (the embeddings go with layer 0)."""
  if k == 0:
    return False
  if name.startswith("bert/embeddings/"):
    return True
  return any(name.startswith("bert/encoder/layer_%d/" % i) for i in range(k))


def test_trainer_steps_are_steps_of_the_skipped_model():
  batches = _batches(2)
  seed = 12
  ks = [int(adapter_drop.layers_to_skip(seed, step, 3)) for step in range(2)]
  assert ks == [1, 1], ks  # 3 layers: k in 0..1; step 0 has lr 0.
  # With AdapterDrop.
  model = tiny_fixtures.tiny_classifier(dropout=0.2, num_layers=3)
  trainer = tiny_fixtures.tiny_trainer(model)
  trainer.seed = seed
  trainer.adapter_drop = True
  trainer._build_train_loop()
  slots = trainer.optimizer._m + trainer.optimizer._v
  losses = []
  for step, k in enumerate(ks):
    before = _values(model)
    loss, _ = trainer._train_loop(iter(batches[step:step + 1]),
                                  tf.constant(1))
    losses.append(float(loss[0]))
    after = _values(model)
    for name, _ in trainer.trainable if step else ():  # Step 0: lr 0.
      moved = np.max(np.abs(after[name] - before[name])) > 0
      assert moved != _skipped(name, k), (step, k, name)
  dropped = _values(model, slots)
  # By hand: the same steps, each with its k lowest layers skipped in the
  # active setup (the variables there get no gradient, so no update).
  model = tiny_fixtures.tiny_classifier(dropout=0.2, num_layers=3)
  trainer = tiny_fixtures.tiny_trainer(model)
  trainer.seed = seed
  want = []
  for step, k in enumerate(ks):
    model.set_active_adapters(model.active_adapters,
                              skip_layers=range(k))
    trainer._build_train_loop()
    loss, _ = trainer._train_loop(iter(batches[step:step + 1]),
                                  tf.constant(1))
    want.append(float(loss[0]))
  by_hand = _values(model, trainer.optimizer._m + trainer.optimizer._v)
  np.testing.assert_allclose(losses, want, rtol=1e-6)
  for name, value in by_hand.items():
    np.testing.assert_allclose(dropped[name], value, atol=1e-6,
                               err_msg=name)


def test_keras_fit_steps_are_steps_of_the_skipped_model():
  batches = _batches(2)
  ks = [int(adapter_drop.layers_to_skip(5, step, 3)) for step in range(2)]
  assert ks[1] == 1, ks  # Step 0 has learning rate 0.
  # (Adam's first steps, ~ lr * sign(gradient), scale float noise up.)
  results = []
  for drop in (True, False):
    model = tiny_fixtures.tiny_classifier(dropout=0.2, num_layers=3)
    tiny_fixtures.tiny_trainer(model)  # Random weights, trainable set.
    model.compile(optimizer=_optimizer(), seed=5, adapter_drop=drop)
    for step, k in enumerate(ks):
      if not drop:
        model.set_active_adapters(model.active_adapters,
                                  skip_layers=range(k))
      features = dict(batches[step])
      labels = features.pop("label_ids")
      model.fit(tf.data.Dataset.from_tensors((features, labels)), verbose=0)
    results.append(_values(model))
  for name, value in results[1].items():
    np.testing.assert_allclose(results[0][name], value, atol=1e-5,
                               err_msg=name)


def _optimizer():
  from adapter_bert.compute import optimization  # pylint: disable=g-import-not-at-top
  return optimization.create_optimizer(5e-2, 6, 1)
