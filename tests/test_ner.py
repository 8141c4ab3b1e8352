"""Token classification: the tagging head, its loss, its compositions."""

import numpy as np
import tensorflow as tf

import modeling
from adapters.composition import MultiTask, Parallel
from test_composition import model_of
from test_modeling import features as as_features
from test_modeling import mixed_batch


def test_tagging_head_reads_every_token_and_ignores_unlabelled_ones():
  model = model_of({"a": "pfeiffer", "b": "lora"}, heads=())
  model.add_tagging_head("a", 5)
  model.add_tagging_head("b", 3, layers=2)
  rng = np.random.default_rng(0)
  for name in ("a", "b"):
    for _, v, _ in model.heads[name].checkpoint_variables(None):
      v.assign(rng.normal(0, 0.3, v.shape).astype(np.float32))
  ids, mask, segs = mixed_batch(model.config, [9, 4, 6], 9)
  feats = as_features(ids, mask, segs)
  model.set_active_adapters("a")
  logits = model(feats).numpy()
  assert logits.shape == (3, 9, 5)
  sequence, _ = model.encode(feats)
  head = model.heads["a"]
  want = sequence.numpy() @ head.output_weights.numpy().T + (
      head.output_bias.numpy())
  np.testing.assert_allclose(logits, want, atol=1e-5)
  # The loss: each example's mean over its labelled tokens (-1: none).
  labels = np.full((3, 9), -1, np.int32)
  labels[0, [0, 2, 5]] = [1, 4, 0]
  labels[1, 1] = 3
  got = modeling.per_example_loss(tf.constant(logits), tf.constant(labels), 5,
                                  False).numpy()
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  assert abs(got[0] - -np.mean([log_probs[0, 0, 1], log_probs[0, 2, 4],
                                log_probs[0, 5, 0]])) <= 1e-5
  assert abs(got[1] + log_probs[1, 1, 3]) <= 1e-5 and got[2] == 0.0
  # Side by side and routed, each task's tags as alone.
  model.set_active_adapters("b")
  alone_b = model(feats).numpy()
  model.set_active_adapters(Parallel("a", "b"))
  both = model(feats)
  np.testing.assert_allclose(both["a"].numpy(), logits, atol=1e-5)
  np.testing.assert_allclose(both["b"].numpy(), alone_b, atol=1e-5)
  model.set_active_adapters(MultiTask("a", "b"))
  routed = model(dict(feats, task_ids=tf.constant([1, 0, 1])))
  np.testing.assert_allclose(routed["a"].numpy()[1], logits[1], atol=1e-5)
  np.testing.assert_allclose(routed["b"].numpy()[[0, 2]], alone_b[[0, 2]],
                             atol=1e-5)
  assert np.isnan(routed["a"].numpy()[0]).all()
