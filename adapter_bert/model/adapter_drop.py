"""AdapterDrop's training recipe (Rücklé et al., EMNLP 2021).

At each training step the adapters of the k lowest encoder layers are
skipped, k drawn uniformly from 0..L-2 (AdapterHub's
`AdapterDropTrainerCallback`: `skip_layers = range(randint(0, L - 1))`); at
evaluation and prediction none are (unless `skip_layers` is set for them).
A model trained so keeps most of its accuracy when the lowest layers'
adapters are dropped at inference, where Parallel branches then share
those layers.

Here k is a function of the run's seed and the step (stateless), so a
resumed run draws the same k at each step as an uninterrupted one. Each k
is its own branch of a `tf.switch_case`, traced once: the backward pass of
a step stops at its lowest adapted layer, and a variable the step did not
reach (an adapter or LayerNorm copy in a skipped layer) is left untouched
by the optimizer, moments included, as PyTorch's AdamW leaves a parameter
whose gradient is None.
"""

import tensorflow as tf

# Folded into the step's seed so that k is independent of dropout masks.
_SALT = 0x5D0


def num_choices(num_layers):
  """How many values k takes on an L-layer encoder: 0..L-2 (at least 0)."""
  return max(1, int(num_layers) - 1)


def layers_to_skip(seed, step, num_layers):
  """k for one step: int32 scalar in [0, num_choices(num_layers)).

  Args:
    seed: the run's seed (python int).
    step: the global step, int scalar tensor.
    num_layers: L.
  """
  key = tf.stack([tf.constant(int(seed), tf.int64),
                  tf.cast(step, tf.int64)])
  key = tf.random.experimental.stateless_fold_in(key, _SALT)
  return tf.random.stateless_uniform(
      [], key, minval=0, maxval=num_choices(num_layers), dtype=tf.int32)


def switch(k, num_layers, loss_and_grads, variables):
  """Runs `loss_and_grads(skip_layers)` for the k drawn.

  Args:
    k: int32 scalar, from `layers_to_skip`.
    num_layers: L.
    loss_and_grads: callable(frozenset of layer indices) -> (loss, list of
      gradients aligned with `variables`, None where not reached, and
      `aux`: tensors of the same structure for every k, e.g. the logits).
    variables: the trained variables.

  Returns:
    (loss, gradients with zeros where not reached, list of bool scalars:
    whether each variable was reached, aux).
  """
  def branch(count):
    def run():
      loss, grads, aux = loss_and_grads(frozenset(range(count)))
      present = tf.constant([g is not None for g in grads], tf.bool)
      dense = [tf.zeros(v.shape, v.dtype) if g is None
               else tf.cast(tf.convert_to_tensor(g), v.dtype) for g, v in zip(grads, variables)]
      return loss, dense, present, aux
    return run

  loss, grads, present, aux = tf.switch_case(
      k, [branch(i) for i in range(num_choices(num_layers))])
  return loss, grads, tf.unstack(present, num=len(variables)), aux
