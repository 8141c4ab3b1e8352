"""One training step's forward and backward pass, shared by Keras' `fit`
(KerasTrainingMixin.train_step) and the command line's loop
(training.Trainer): the dropout seed, the kernels, the active setup with
AdapterDrop's skipped layers, the loss and its gradients.
"""

import dataclasses

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
import tensorflow as tf

from adapter_bert.model import adapter_drop as adapter_drop_lib


class TrainingStep:
  """Loss and gradients of a model's trained variables for one step.

  Usage (inside a tf.function):

    step = TrainingStep(model, variables, loss_fn, policy, seed=0)
    loss, grads, present, logits = step(features, labels, step_number)
    # present: None, or (AdapterDrop) one bool scalar per variable: whether
    # the step reached it (its gradient is zeros where not).
  """

  def __init__(self, model, variables, loss_fn, policy, seed=0,
               adapter_drop=False, loss_scale=None):
    """Args:
      model: a BertAdapterModel (or a model called the same way).
      variables: the trained variables, in the gradients' order.
      loss_fn: callable(logits, labels) -> the scalar loss to differentiate.
      policy: the kernels (compute.kernels.KernelPolicy).
      seed: base of the dropout seeds: a step's masks are f(seed, step).
      adapter_drop: AdapterDrop's recipe: each step skips the adapters of a
        random number of the lowest layers (model.adapter_drop).
      loss_scale: None, or a variable: the loss is multiplied by it before
        differentiating and the gradients divided again (float16).
    """
    self.model = model
    self.variables = list(variables)
    self.loss_fn = loss_fn
    self.policy = policy
    self.seed = int(seed)
    self.adapter_drop = bool(adapter_drop)
    self.loss_scale = loss_scale

  def dropout_seed(self, step):
    """The dropout seed [2] of global step `step` (int64 scalar)."""
    return tf.stack([tf.constant(self.seed, tf.int64),
                     tf.cast(step, tf.int64)])

  def loss_and_grads(self, features, labels, dropout_seed, skip_layers=None):
    """(loss, gradients aligned with the variables (None where the loss does
    not reach one), logits) of one batch.

    Args:
      skip_layers: None (the active setup's), or the layers whose adapters
        this pass skips.
    """
    setup = None
    if skip_layers is not None:
      setup = dataclasses.replace(self.model.active_setup(),
                                  skip_layers=skip_layers)
    with tf.GradientTape() as tape:
      logits = self.model(features, training=True, dropout_seed=dropout_seed,
                          policy=self.policy, setup=setup)
      loss = self.loss_fn(logits, labels)
      scaled = loss * self.loss_scale if self.loss_scale is not None else loss
    grads = tape.gradient(scaled, self.variables)
    if self.loss_scale is not None:
      grads = [g / self.loss_scale if g is not None else None for g in grads]
    return loss, grads, logits

  def run(self, step, compute):
    """(loss, grads, present, aux) of `compute(skip_layers) -> (loss, grads,
    aux)`: once, or under AdapterDrop once per number of skipped layers
    (tf.switch_case picks the drawn one)."""
    if not self.adapter_drop:
      loss, grads, aux = compute(None)
      return loss, grads, None, aux
    layers = self.model.config.num_hidden_layers
    return adapter_drop_lib.switch(
        adapter_drop_lib.layers_to_skip(self.seed, step, layers), layers,
        compute, self.variables)

  def __call__(self, features, labels, step):
    """(loss, grads, present, logits) of global step `step`."""
    seed = self.dropout_seed(step)
    return self.run(step, lambda skip: self.loss_and_grads(
        features, labels, seed, skip))
