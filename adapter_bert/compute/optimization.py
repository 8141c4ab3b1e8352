"""Adam with decoupled weight decay, as in adapter-BERT, for TF2 training loops.

This reproduces the update rule of the optimizer used to fine-tune BERT and
adapter-BERT (Devlin et al. 2018; Houlsby et al. 2019):

  * The learning rate warms up linearly from 0 to `init_lr` over the first
    `num_warmup_steps` steps; otherwise it decays linearly from `init_lr` at
    step 0 to 0 at `num_train_steps` (the decay is measured from step 0, not
    from the end of the warmup, exactly like the original).
  * All gradients are clipped together to a global norm of 1.0.
  * Adam moments without bias correction, and "decoupled" L2 weight decay
    that is added to the Adam update (not to the loss). Variables whose name
    matches "LayerNorm", "layer_norm" or "bias" are not decayed; adapter
    variables (every method's, as the model's tags say; by name, "adapters",
    where no tags are given) may use their own decay rate.

`create_optimizer(..., optimizer="adamw")` gives instead the update that
AdapterHub's and the Hugging Face Trainer's runs use (torch's `AdamW` with
`get_linear_schedule_with_warmup`): bias-corrected Adam moments, epsilon
1e-8, and a decay that starts from the end of the warmup. The weight decay
(decoupled, the same exclusions) and the clipping are the same. Without bias
correction the first updates are about 3x larger (0.1 / sqrt(0.001)) and
are still 1.6x larger after 500 steps, so a rate tuned for one is too large
or too small for the other.

The training loop's optimizer (`AdamWeightDecay`) is a `tf.Module` rather
than a Keras optimizer so that the slot variables have the reference
checkpoint names `<variable>/adam_m` and `<variable>/adam_v`, and so that the
cross-replica reduction is explicit. `KerasAdamWeightDecay` is the same
update as a Keras optimizer, for `model.compile(...)` and `fit`; both run
`adam_weight_decay_update`.
"""

import re

import keras
import tensorflow as tf

from adapter_bert import errors

_ADAPTER_NAME_PATTERN = "adapters"


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup followed by linear decay to zero (the BERT schedule).

  Calling the schedule with a (possibly symbolic) global step returns a scalar
  float32 tensor:

    lr(step) = init_lr * step / num_warmup_steps          if step < warmup
    lr(step) = init_lr * (1 - min(step, T) / T)           otherwise

  where T is `num_train_steps`.
  """

  def __init__(self, init_lr, num_train_steps, num_warmup_steps):
    """Creates the schedule.

    Args:
      init_lr: float, the peak learning rate.
      num_train_steps: int > 0, the step at which the learning rate reaches 0.
      num_warmup_steps: int >= 0, the number of warmup steps (0 = no warmup).

    Raises:
      errors.UserError: if a step count is out of range.
    """
    if int(num_train_steps) <= 0:
      raise errors.UserError(
          "the number of training steps must be positive, got %r" %
          (num_train_steps,))
    if int(num_warmup_steps) < 0:
      raise errors.UserError(
          "the number of warmup steps must be >= 0, got %r" %
          (num_warmup_steps,))
    self.init_lr = float(init_lr)
    self.num_train_steps = int(num_train_steps)
    self.num_warmup_steps = int(num_warmup_steps)

  def __call__(self, step):
    """Returns the learning rate for `step` as a float32 scalar tensor."""
    with tf.name_scope("warmup_linear_decay"):
      # The original casts the global step to int32 before the warmup test.
      step_int = tf.cast(step, tf.int64)
      step_float = tf.cast(step_int, tf.float32)
      init_lr = tf.constant(self.init_lr, dtype=tf.float32)

      # Polynomial decay with power 1, end value 0 and no cycling.
      decay_steps = tf.constant(float(self.num_train_steps), dtype=tf.float32)
      clipped_step = tf.minimum(step_float, decay_steps)
      learning_rate = init_lr * (1.0 - clipped_step / decay_steps)

      if self.num_warmup_steps:
        warmup_steps_float = tf.constant(
            float(self.num_warmup_steps), dtype=tf.float32)
        warmup_learning_rate = init_lr * (step_float / warmup_steps_float)
        is_warmup = tf.cast(
            step_int < tf.constant(self.num_warmup_steps, dtype=tf.int64),
            tf.float32)
        learning_rate = ((1.0 - is_warmup) * learning_rate +
                         is_warmup * warmup_learning_rate)
      return learning_rate

  def get_config(self):
    return {
        "init_lr": self.init_lr,
        "num_train_steps": self.num_train_steps,
        "num_warmup_steps": self.num_warmup_steps,
    }


class LinearWarmupThenDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup, then linear decay to zero from the END of the warmup
  (Hugging Face's `get_linear_schedule_with_warmup`, which AdapterHub's
  training uses):

    lr(step) = init_lr * step / num_warmup_steps                 if step < W
    lr(step) = init_lr * max(0, (T - step) / (T - W))            otherwise

  where T is `num_train_steps` and W `num_warmup_steps`. `WarmupLinearDecay`
  (the reference) decays from step 0 instead, so after its warmup it starts
  at init_lr * (1 - W / T).
  """

  def __init__(self, init_lr, num_train_steps, num_warmup_steps):
    """Creates the schedule (same arguments and checks as WarmupLinearDecay).

    Raises:
      errors.UserError: if a step count is out of range.
    """
    reference = WarmupLinearDecay(init_lr, num_train_steps, num_warmup_steps)
    self.init_lr = reference.init_lr
    self.num_train_steps = reference.num_train_steps
    self.num_warmup_steps = min(reference.num_warmup_steps,
                                reference.num_train_steps)

  def __call__(self, step):
    """Returns the learning rate for `step` as a float32 scalar tensor."""
    with tf.name_scope("linear_warmup_then_decay"):
      step_float = tf.cast(tf.cast(step, tf.int64), tf.float32)
      init_lr = tf.constant(self.init_lr, dtype=tf.float32)
      warmup = float(self.num_warmup_steps)
      total = float(self.num_train_steps)
      decay = init_lr * tf.maximum(
          0.0, (total - step_float) / max(total - warmup, 1.0))
      if not self.num_warmup_steps:
        return decay
      rising = init_lr * step_float / warmup
      return tf.where(step_float < warmup, rising, decay)

  def get_config(self):
    return {
        "init_lr": self.init_lr,
        "num_train_steps": self.num_train_steps,
        "num_warmup_steps": self.num_warmup_steps,
    }


def _as_tf_variable(variable):
  """Returns the `tf.Variable` behind `variable` (unwrapping Keras 3)."""
  if isinstance(variable, tf.Variable):
    return variable
  # A Keras 3 variable on the TensorFlow backend wraps a tf.Variable (or a
  # MirroredVariable under a strategy) and exposes it as `.value`.
  inner = getattr(variable, "value", None)
  if isinstance(inner, tf.Variable):
    return inner
  raise TypeError("expected a tf.Variable, got %r" % (variable,))


class AdamWeightDecay(tf.Module):
  """Adam with decoupled weight decay and global-norm clipping (the
  reference: no bias correction; `bias_correction=True`: torch's AdamW).

  Usage:

    optimizer = AdamWeightDecay(WarmupLinearDecay(2e-5, 1000, 100))
    optimizer.build([(name, variable) for ...])   # under strategy.scope()
    ...
    learning_rate = optimizer.apply_gradients(grads, step)

  `apply_gradients` may be called eagerly, in a `tf.function` (also with
  `jit_compile=True`), or in the replica context of a `tf.distribute`
  strategy (inside `strategy.run`). In the latter case every replica passes
  the gradients of its own share of a loss that was already divided by the
  GLOBAL batch size; the gradients are summed over the replicas, then clipped
  and applied identically to every copy of the variables and slots.
  """

  def __init__(self,
               learning_rate,
               weight_decay_rate=0.01,
               adapter_weight_decay_rate=0.01,
               beta_1=0.9,
               beta_2=0.999,
               epsilon=1e-6,
               exclude_from_weight_decay=("LayerNorm", "layer_norm", "bias"),
               clip_norm=1.0,
               name="AdamWeightDecay",
               bias_correction=False):
    """Creates the optimizer (no variables until `build`).

    Args:
      learning_rate: float, or a callable mapping the global step to a scalar
        float32 tensor (e.g. `WarmupLinearDecay`).
      weight_decay_rate: float, decay rate of the non-adapter variables.
      adapter_weight_decay_rate: float, decay rate of the adapter methods'
        variables (see `build`).
      beta_1: float, decay of the first moment.
      beta_2: float, decay of the second moment.
      epsilon: float, added to sqrt(v) in the denominator.
      exclude_from_weight_decay: regular expressions; a variable whose name
        matches any of them (`re.search`) is not decayed.
      clip_norm: float or None, the global norm the gradients are clipped to.
      name: name of the module.
      bias_correction: bool; True divides the moments by (1 - beta^t) at
        the t-th update (t = step + 1), as Adam, torch's AdamW and the
        Hugging Face Trainer do; False (the reference) does not.
    """
    super(AdamWeightDecay, self).__init__(name=name)
    self.learning_rate = learning_rate
    self.weight_decay_rate = float(weight_decay_rate)
    self.adapter_weight_decay_rate = float(adapter_weight_decay_rate)
    self.beta_1 = float(beta_1)
    self.beta_2 = float(beta_2)
    self.epsilon = float(epsilon)
    self.exclude_from_weight_decay = tuple(exclude_from_weight_decay or ())
    self.clip_norm = None if clip_norm is None else float(clip_norm)
    self.bias_correction = bool(bias_correction)
    self._names = []
    self._variables = []
    self._m = []
    self._v = []
    self._decay_rates = []
    self._built = False

  # --------------------------------------------------------------------------
  # Variables.

  def weight_decay_rate_for(self, name, is_adapter=None):
    """Returns the decay rate that applies to the variable called `name`.

    Args:
      name: checkpoint name of the variable.
      is_adapter: whether it belongs to an adapter method, as the model's
        tags say (every method's variables, whatever their names); None:
        decided by the name as in the reference ("adapters" in it).

    Returns:
      float, 0.0 when the variable is not decayed.
    """
    for pattern in self.exclude_from_weight_decay:
      if re.search(pattern, name) is not None:
        return 0.0
    if is_adapter is None:
      is_adapter = _ADAPTER_NAME_PATTERN in name
    if is_adapter:
      return self.adapter_weight_decay_rate
    return self.weight_decay_rate

  def build(self, named_variables, adapter_names=None):
    """Creates the zero `adam_m` / `adam_v` slots of the trained variables.

    Call it under the strategy scope that created the variables (or with no
    strategy): the slots are then mirrored / replicated like the variables.

    Args:
      named_variables: list of (checkpoint_name, variable) for the TRAINABLE
        variables, in the order that `apply_gradients` receives gradients.
        Variables may be `tf.Variable`s or Keras 3 variables.
      adapter_names: the names among them that belong to adapter methods
        (the model's tags: `ModelView.adapter_names`), decayed at
        `adapter_weight_decay_rate`; None: chosen by name (see
        `weight_decay_rate_for`).

    Raises:
      ValueError: on a second call, a duplicated name or a non-trainable
        variable.
    """
    if self._built:
      raise ValueError("AdamWeightDecay.build() was already called")
    names = []
    variables = []
    for name, variable in named_variables:
      if not getattr(variable, "trainable", True):
        raise ValueError("variable %s is not trainable; pass only the "
                         "variables to train" % name)
      if name in names:
        raise ValueError("variable name %s is given twice" % name)
      names.append(name)
      variables.append(_as_tf_variable(variable))

    with tf.name_scope(self.name):
      for name, variable in zip(names, variables):
        m = self._create_slot(variable, name + "/adam_m")
        v = self._create_slot(variable, name + "/adam_v")
        self._names.append(name)
        self._variables.append(variable)
        self._m.append(m)
        self._v.append(v)
        self._decay_rates.append(self.weight_decay_rate_for(
            name, None if adapter_names is None else name in adapter_names))
    self._built = True

  def _create_slot(self, variable, slot_name):
    """Creates one float32 zero slot placed (and replicated) like `variable`."""
    shape = variable.shape

    def make(strategy):
      with strategy.extended.colocate_vars_with(variable):
        return tf.Variable(
            lambda: tf.zeros(shape, dtype=tf.float32),
            trainable=False,
            name=slot_name,
            dtype=tf.float32)

    if tf.distribute.has_strategy():
      if not tf.distribute.in_cross_replica_context():
        raise ValueError("build() must be called in a cross-replica context "
                         "(under strategy.scope(), not inside strategy.run)")
      return make(tf.distribute.get_strategy())
    if isinstance(variable, tf.distribute.DistributedValues):
      # Built outside the scope of the strategy that owns the variable.
      strategy = variable.distribute_strategy
      with strategy.scope():
        return make(strategy)
    return make(tf.distribute.get_strategy())

  @property
  def built(self):
    return self._built

  @property
  def variable_names(self):
    """Checkpoint names of the built variables, in gradient order."""
    return list(self._names)

  def slot_variables(self):
    """Returns {name + "/adam_m": m, name + "/adam_v": v} for every variable."""
    slots = {}
    for name, m, v in zip(self._names, self._m, self._v):
      slots[name + "/adam_m"] = m
      slots[name + "/adam_v"] = v
    return slots

  # --------------------------------------------------------------------------
  # Update.

  def learning_rate_at(self, step):
    """Returns the learning rate for `step` as a float32 scalar tensor."""
    if callable(self.learning_rate):
      learning_rate = self.learning_rate(step)
    else:
      learning_rate = self.learning_rate
    return tf.cast(learning_rate, tf.float32)

  def apply_gradients(self, grads, step, present=None):
    """Clips the gradients and applies one Adam-with-weight-decay update.

    Args:
      grads: list of gradients aligned with the variables given to `build`;
        None entries are skipped. Gradients may be float16/bfloat16 or
        `tf.IndexedSlices`; they are cast to the variable dtype.
      step: the global step (int scalar), used by a callable learning rate.
      present: None, or one bool scalar tensor per gradient: where False,
        the gradient (zeros) stands for None decided at run time (AdapterDrop
        skipped that variable's layer): the variable and its slots keep
        their values.

    Returns:
      The learning rate used, a float32 scalar tensor.

    Raises:
      ValueError: if the optimizer is not built or `grads` does not match.
    """
    if not self._built:
      raise ValueError("call AdamWeightDecay.build() before apply_gradients()")
    grads = list(grads)
    if len(grads) != len(self._variables):
      raise ValueError("got %d gradients for %d variables" %
                       (len(grads), len(self._variables)))

    learning_rate = self.learning_rate_at(step)
    indices = [i for i, g in enumerate(grads) if g is not None]
    if not indices:
      return learning_rate
    flags = None if present is None else [present[i] for i in indices]
    dense_grads = []
    for i in indices:
      grad = grads[i]
      if isinstance(grad, tf.IndexedSlices):
        grad = tf.convert_to_tensor(grad)
      # Cast before any reduction so that float16 sums cannot overflow.
      dense_grads.append(tf.cast(grad, self._variables[i].dtype))

    if not tf.distribute.has_strategy():
      self._clip_and_apply(None, indices, dense_grads, learning_rate, flags,
                           step)
    elif tf.distribute.in_cross_replica_context():
      # Gradients given in cross-replica context are taken as already reduced.
      self._clip_and_apply(tf.distribute.get_strategy(), indices, dense_grads,
                           learning_rate, flags, step)
    else:
      replica_context = tf.distribute.get_replica_context()
      # Sum over replicas: each replica's loss is already divided by the
      # global batch size, so the sum is the gradient of the global mean.
      summed = replica_context.all_reduce(tf.distribute.ReduceOp.SUM,
                                          dense_grads)
      clipped = self.clip(summed)
      replica_context.merge_call(
          self._distributed_apply,
          args=(indices, clipped, learning_rate, flags, step))
    return learning_rate

  def clip(self, grads):
    """The gradients clipped to `clip_norm` by their global norm (None
    entries stay None)."""
    if self.clip_norm is None:
      return grads
    clipped, _ = tf.clip_by_global_norm(grads, clip_norm=self.clip_norm)
    return clipped

  def _clip_and_apply(self, strategy, indices, grads, learning_rate,
                      flags=None, step=None):
    clipped = self.clip(grads)
    flags = flags or [None] * len(indices)
    if strategy is None:
      for i, grad, flag in zip(indices, clipped, flags):
        self._apply_one(i, self._variables[i], grad, learning_rate, flag,
                        step)
    else:
      self._distributed_apply(strategy, indices, clipped, learning_rate,
                              flags, step)

  def _distributed_apply(self, strategy, indices, grads, learning_rate,
                         flags=None, step=None):
    """Updates every copy of the variables and slots (cross-replica context).

    `grads` and `learning_rate` may be per-replica values (identical on every
    replica after the all-reduce); `extended.update` hands each device its own
    component, and the slots, read and assigned inside the update context,
    resolve to the component on the same device.
    """
    flags = flags or [None] * len(indices)
    # The step only matters to the bias correction.
    step = step if self.bias_correction else None
    for i, grad, flag in zip(indices, grads, flags):
      strategy.extended.update(
          self._variables[i],
          self._make_update_fn(i, flag is not None, step is not None),
          args=((grad, learning_rate) + ((flag,) if flag is not None else ())
                + ((step,) if step is not None else ())),
          group=False)

  def _make_update_fn(self, index, has_flag, has_step):
    def update_fn(variable, grad, learning_rate, *rest):
      rest = list(rest)
      flag = rest.pop(0) if has_flag else None
      step = rest.pop(0) if has_step else None
      return self._apply_one(index, variable, grad, learning_rate, flag, step)
    return update_fn

  def _apply_one(self, index, variable, grad, learning_rate, present=None,
                 step=None):
    m = self._m[index]
    v = self._v[index]
    next_param, next_m, next_v = self.update(
        variable.read_value(), grad, m.read_value(), v.read_value(),
        learning_rate, self._decay_rates[index], present, step)
    return tf.group(
        variable.assign(tf.cast(next_param, variable.dtype)),
        m.assign(next_m),
        v.assign(next_v))

  def update(self, param, grad, m, v, learning_rate, decay_rate,
             present=None, step=None):
    """The update of one variable and its two slots (after clipping): Adam
    (bias-corrected or not, see `bias_correction`), decoupled weight decay
    at `decay_rate`. What both this optimizer and its Keras face
    (KerasAdamWeightDecay) apply.

    Args:
      present: None, or a bool scalar: where False (AdapterDrop did not
        reach the variable this step), everything keeps its value.
      step: the number of updates applied before this one (int scalar);
        read only with bias correction, where it is required.

    Returns:
      float32 (next param, next m, next v).

    Raises:
      ValueError: bias correction without a step.
    """
    corrections = None
    if self.bias_correction:
      if step is None:
        raise ValueError("a bias-corrected update needs the step")
      corrections = bias_corrections(step, self.beta_1, self.beta_2)
    next_param, next_m, next_v = adam_weight_decay_update(
        param, grad, m, v, learning_rate, self.beta_1, self.beta_2,
        self.epsilon, decay_rate, corrections)
    if present is not None:
      next_param, next_m, next_v = keep_unless(
          present, (next_param, next_m, next_v),
          (tf.convert_to_tensor(param), tf.convert_to_tensor(m),
           tf.convert_to_tensor(v)))
    return next_param, next_m, next_v


def keep_unless(present, new, old):
  """`new` where the bool scalar `present`, else `old` (tuples)."""
  return tuple(tf.where(present, n, tf.cast(o, n.dtype))
               for n, o in zip(new, old))


def bias_corrections(step, beta_1, beta_2):
  """(1 - beta_1^t, 1 - beta_2^t) for the t-th update, t = step + 1, as
  float32 scalars."""
  t = tf.cast(step, tf.float32) + 1.0
  return (1.0 - tf.pow(tf.constant(beta_1, tf.float32), t),
          1.0 - tf.pow(tf.constant(beta_2, tf.float32), t))


def adam_weight_decay_update(param, grad, m, v, learning_rate, beta_1,
                             beta_2, epsilon, decay_rate, corrections=None):
  """The update of one variable: Adam, decoupled weight decay added to the
  update.

  Without `corrections` it is the reference's (no bias correction). With
  `corrections` = (1 - beta_1^t, 1 - beta_2^t) it is torch's AdamW:
  param -= lr * (m / c1) / (sqrt(v / c2) + epsilon) + lr * decay * param.

  Returns:
    float32 (next param, next m, next v).
  """
  grad = tf.cast(grad, tf.float32)
  next_m = tf.multiply(beta_1, m) + tf.multiply(1.0 - beta_1, grad)
  next_v = tf.multiply(beta_2, v) + tf.multiply(1.0 - beta_2, tf.square(grad))
  if corrections is None:
    update = next_m / (tf.sqrt(next_v) + epsilon)
  else:
    correction_1, correction_2 = corrections
    update = (next_m / correction_1) / (
        tf.sqrt(next_v) / tf.sqrt(correction_2) + epsilon)
  if decay_rate:
    update += decay_rate * tf.cast(param, tf.float32)
  update_with_lr = learning_rate * update
  next_param = tf.cast(param, tf.float32) - update_with_lr
  return next_param, next_m, next_v


class KerasAdamWeightDecay(keras.optimizers.Optimizer):
  """AdamWeightDecay's Keras face, for `compile` and `fit` (what
  `as_keras_optimizer` makes of an AdamWeightDecay).

  It holds no rule of its own: the clipping (`AdamWeightDecay.clip`), the
  update (`AdamWeightDecay.update`), the learning rate schedule and each
  variable's decay rate (`weight_decay_rate_for`) are its AdamWeightDecay's;
  Keras owns the slots and the step count. The decay rate of a variable is
  chosen by the model's tags and its checkpoint name (handed over in
  `compile`; a variable without one is matched by its Keras path).
  """

  def __init__(self, learning_rate, weight_decay_rate=0.01,
               adapter_weight_decay_rate=0.01, beta_1=0.9, beta_2=0.999,
               epsilon=1e-6,
               exclude_from_weight_decay=("LayerNorm", "layer_norm", "bias"),
               clip_norm=1.0, name="AdamWeightDecay", bias_correction=False,
               **kwargs):
    super().__init__(learning_rate=learning_rate, global_clipnorm=clip_norm,
                     name=name, **kwargs)
    self._rule = AdamWeightDecay(
        learning_rate, weight_decay_rate=weight_decay_rate,
        adapter_weight_decay_rate=adapter_weight_decay_rate, beta_1=beta_1,
        beta_2=beta_2, epsilon=epsilon,
        exclude_from_weight_decay=exclude_from_weight_decay,
        clip_norm=clip_norm, bias_correction=bias_correction)
    self._checkpoint_names = {}
    self._adapter_ids = None
    self._decay_rates = {}

  def set_checkpoint_names(self, names_by_id, adapter_ids=None):
    """{id(variable): checkpoint name}, and the ids of the variables of
    adapter methods (None: chosen by name), read when the slots are built."""
    self._checkpoint_names = dict(names_by_id)
    self._adapter_ids = None if adapter_ids is None else set(adapter_ids)

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    self._m, self._v = [], []
    for variable in var_list:
      name = self._checkpoint_names.get(id(variable), variable.path)
      is_adapter = (None if self._adapter_ids is None else
                    id(variable) in self._adapter_ids)
      self._decay_rates[self._var_key(variable)] = (
          self._rule.weight_decay_rate_for(name, is_adapter))
      self._m.append(self.add_variable_from_reference(variable, "adam_m"))
      self._v.append(self.add_variable_from_reference(variable, "adam_v"))

  def set_present(self, variables, present):
    """Whether each variable was reached (bool scalars) for the next apply
    (AdapterDrop: a variable not reached keeps its value and slots); None
    present: all were."""
    self._present = None if present is None else {
        self._var_key(v): p for v, p in zip(variables, present)}

  def _clip_gradients(self, grads):
    # Keras' hook for clipping, given the rule's (None entries kept).
    return self._rule.clip(grads)

  def update_step(self, gradient, variable, learning_rate):
    index = self._get_variable_index(variable)
    m, v = self._m[index], self._v[index]
    present = (getattr(self, "_present", None) or {}).get(
        self._var_key(variable))
    # Keras counts the updates applied so far in `iterations`.
    next_param, next_m, next_v = self._rule.update(
        variable, gradient, m, v, tf.cast(learning_rate, tf.float32),
        self._decay_rates[self._var_key(variable)], present,
        step=self.iterations)
    self.assign(m, next_m)
    self.assign(v, next_v)
    self.assign(variable, tf.cast(next_param, variable.dtype))

  def get_config(self):
    config = super().get_config()
    rule = self._rule
    config.update(weight_decay_rate=rule.weight_decay_rate,
                  adapter_weight_decay_rate=rule.adapter_weight_decay_rate,
                  beta_1=rule.beta_1, beta_2=rule.beta_2,
                  epsilon=rule.epsilon,
                  exclude_from_weight_decay=list(
                      rule.exclude_from_weight_decay),
                  clip_norm=rule.clip_norm,
                  bias_correction=rule.bias_correction)
    config.pop("global_clipnorm", None)
    return config


def as_keras_optimizer(optimizer):
  """A Keras optimizer from an AdamWeightDecay, a Keras optimizer or a name.

  "adam_weight_decay" is the command line's optimizer at a constant 2e-5
  (give an AdamWeightDecay of `create_optimizer` for the schedule).
  """
  if isinstance(optimizer, keras.optimizers.Optimizer):
    return optimizer
  if isinstance(optimizer, AdamWeightDecay):
    return KerasAdamWeightDecay(
        optimizer.learning_rate, optimizer.weight_decay_rate,
        optimizer.adapter_weight_decay_rate, optimizer.beta_1,
        optimizer.beta_2, optimizer.epsilon,
        optimizer.exclude_from_weight_decay, optimizer.clip_norm,
        bias_correction=optimizer.bias_correction)
  if optimizer == "adam_weight_decay":
    return KerasAdamWeightDecay(2e-5)
  return keras.optimizers.get(optimizer)


# The updates `create_optimizer` knows, by name: the schedule, whether the
# moments are bias-corrected, and Adam's epsilon.
OPTIMIZERS = {
    # The reference (BERT's and adapter-BERT's optimization.py).
    "adam_weight_decay": (WarmupLinearDecay, False, 1e-6),
    # torch's AdamW (epsilon 1e-8) with Hugging Face's linear schedule: what
    # AdapterHub's and the Hugging Face Trainer's runs use.
    "adamw": (LinearWarmupThenDecay, True, 1e-8),
}


def create_optimizer(init_lr,
                     num_train_steps,
                     num_warmup_steps,
                     weight_decay_rate=0.01,
                     adapter_weight_decay_rate=0.01,
                     optimizer="adam_weight_decay"):
  """Returns a fine-tuning optimizer (not yet built).

  Both updates clip gradients to a global norm of 1.0, use betas (0.9,
  0.999) and decoupled weight decay, with no decay for LayerNorm variables
  and biases.

  Args:
    init_lr: float, the peak learning rate.
    num_train_steps: int, total number of training steps.
    num_warmup_steps: int, number of linear warmup steps.
    weight_decay_rate: float, decay of the non-adapter variables.
    adapter_weight_decay_rate: float, decay of the adapter variables.
    optimizer: "adam_weight_decay" (the reference: no bias correction,
      epsilon 1e-6, decay measured from step 0) or "adamw" (AdapterHub's and
      the Hugging Face Trainer's: bias correction, epsilon 1e-8, decay from
      the end of the warmup).

  Returns:
    An `AdamWeightDecay` with its learning rate schedule.

  Raises:
    errors.UserError: an unknown optimizer or step counts out of range.
  """
  if optimizer not in OPTIMIZERS:
    raise errors.UserError("optimizer %r is not one of %s" % (
        optimizer, ", ".join(OPTIMIZERS)))
  schedule, bias_correction, epsilon = OPTIMIZERS[optimizer]
  return AdamWeightDecay(
      learning_rate=schedule(init_lr, num_train_steps, num_warmup_steps),
      weight_decay_rate=weight_decay_rate,
      adapter_weight_decay_rate=adapter_weight_decay_rate,
      beta_1=0.9,
      beta_2=0.999,
      epsilon=epsilon,
      exclude_from_weight_decay=("LayerNorm", "layer_norm", "bias"),
      clip_norm=1.0,
      bias_correction=bias_correction)
