"""One transformer block: attention, feed-forward, residual LayerNorms and the
hook points around them (attention_output, ffn_output and the projections).
"""

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
import keras

from adapter_bert.adapters import composition
from adapter_bert.adapters import registry
from adapter_bert.compute import kernels
from adapter_bert.compute.activations import get_activation
from adapter_bert.model.attention import BertSelfAttention
from adapter_bert.model.config import as_bert_config
from adapter_bert.model.hooks import LayerNormCopies
from adapter_bert.model.hooks import NO_ADAPTERS
from adapter_bert.model.hooks import Tag
from adapter_bert.model.hooks import adapter_items
from adapter_bert.model.hooks import add_hooks
from adapter_bert.model.hooks import apply_layer_norm
from adapter_bert.model.hooks import copy_layer_norm
from adapter_bert.model.hooks import dense_variables
from adapter_bert.model.hooks import first_positions
from adapter_bert.model.hooks import new_layer_norm
from adapter_bert.model.hooks import scoped
from adapter_bert.model.hooks import unlocked
from adapter_bert.model.hooks import weight_initializer


@keras.saving.register_keras_serializable(package="adapter_bert")
class TransformerBlock(keras.layers.Layer):
  """One BERT layer with adapter hook points.

  attention -> output dense -> dropout -> [hook "attention_output"] ->
  LayerNorm(+input) -> intermediate dense (act) -> output dense -> dropout ->
  [hook "ffn_output"] -> LayerNorm(+attention output) -> [hook
  "block_output"].

  The attention part is pluggable through `attention_cls` (any layer with
  BertSelfAttention's call signature). An adapter that trains LayerNorms
  holds its own copy of both.
  """

  def __init__(self, config, adapters=None, attention_cls=None, shared=None,
               index=0, **kwargs):
    """Args: config, the BertConfig; adapters, (name, config) pairs built
    now; attention_cls, the attention layer; shared, adapters' model-level
    layers by name; index, the layer's depth in the encoder (0: lowest),
    which per-layer adapter choices (leave_out, ...) read."""
    super().__init__(**kwargs)
    self.config = as_bert_config(config)
    self.index = int(index)
    c = self.config
    h = c.hidden_size
    init = weight_initializer(c)
    self.attention = (attention_cls or BertSelfAttention)(c, name="attention")
    self.attention_output_dense = keras.layers.Dense(
        h, kernel_initializer=init, name="attention_output_dense")
    self.attention_layer_norm = new_layer_norm("attention_output_LayerNorm")
    self.intermediate_dense = keras.layers.Dense(
        c.intermediate_size, kernel_initializer=init, name="intermediate_dense")
    self.output_dense = keras.layers.Dense(h, kernel_initializer=init,
                                           name="output_dense")
    self.output_layer_norm = new_layer_norm("output_LayerNorm")
    self.intermediate_act = get_activation(c.hidden_act)
    # "gelu" (the tanh form) gets the fast kernels.
    self._fast_gelu = str(c.hidden_act).lower() == "gelu"
    add_hooks(self, ("attention_output", "intermediate_projection",
                      "output_projection", "ffn_output", "block_output"))
    # Each adapter's LayerNorm copies, by adapter name.
    self.attention_layer_norms = {}
    self.output_layer_norms = {}
    self._attention_norms = LayerNormCopies(self, "attention_layer_norm",
                                        "attention_layer_norms")
    self._output_norms = LayerNormCopies(self, "output_layer_norm",
                                     "output_layer_norms")
    self.adapter_configs = {}
    self.attention_layer_norm.build((None, h))
    self.output_layer_norm.build((None, h))
    # Adapters given here are built before the dense layers: the order in
    # which the random initial values are drawn is the toolkit's of before.
    for name, adapter_config in adapter_items(adapters):
      self.add_adapter(name, adapter_config, (shared or {}).get(name))
    self.attention_output_dense.build((None, h))
    self.intermediate_dense.build((None, h))
    self.output_dense.build((None, c.intermediate_size))

  def add_adapter(self, name, adapter_config, shared=None):
    """Adds adapter `name`'s layers (and LayerNorm copies, if it trains
    them); `shared` is its model-level layer, if its method has one."""
    with unlocked(self):
      self.adapter_configs[name] = adapter_config
      if registry.owns_layer_norms(adapter_config):
        self.attention_layer_norms[name] = copy_layer_norm(
            self.attention_layer_norm, "attention_output_LayerNorm")
        self.output_layer_norms[name] = copy_layer_norm(
            self.output_layer_norm, "output_LayerNorm")
      for point, layer in registry.layers_for(
          adapter_config, self.config, self.index, shared).items():
        hook = (self.attention.hooks[point] if point in self.attention.hooks
                else getattr(self, point))
        hook.add(name, layer)

  def projections(self):
    """{projection hook point: (its AdapterHook, the base Dense after which
    it sits)}: where LoRA-like layers are and what they merge into."""
    a = self.attention
    return {"query": (a.hooks["query"], a.query),
            "key": (a.hooks["key"], a.key),
            "value": (a.hooks["value"], a.value),
            "intermediate_projection": (self.intermediate_projection,
                                        self.intermediate_dense),
            "output_projection": (self.output_projection, self.output_dense)}

  def delete_adapter(self, name):
    with unlocked(self):
      self.adapter_configs.pop(name, None)
      self.attention_layer_norms.pop(name, None)
      self.output_layer_norms.pop(name, None)
      for hook in (list(self.attention.hooks.values())
                   + [self.attention_output, self.intermediate_projection,
                      self.output_projection, self.ffn_output,
                      self.block_output]):
        hook.remove(name)

  def checkpoint_variables(self, branch, serving=False):
    """[(name under `encoder/layer_<i>/`, variable, tag)] of one branch."""
    owner = branch.layer_norms
    ln_tag = Tag("layer_norm", owner)
    items = scoped("attention/self",
                    self.attention.checkpoint_variables(branch, serving))
    items += dense_variables("attention/output/dense",
                              self.attention_output_dense)
    fusions = composition.fusion_names(branch)
    items += self.attention_output.checkpoint_variables(
        registry.HOOK_SCOPES["attention_output"], branch.adapters, serving,
        fusions)
    items += self._attention_norms.of(owner).checkpoint_variables(
        "attention/output/LayerNorm", ln_tag)
    items += dense_variables("intermediate/dense", self.intermediate_dense)
    items += self.intermediate_projection.checkpoint_variables(
        registry.HOOK_SCOPES["intermediate_projection"], branch.adapters, serving)
    items += dense_variables("output/dense", self.output_dense)
    items += self.output_projection.checkpoint_variables(
        registry.HOOK_SCOPES["output_projection"], branch.adapters, serving)
    items += self.ffn_output.checkpoint_variables(
        registry.HOOK_SCOPES["ffn_output"], branch.adapters, serving, fusions)
    items += self._output_norms.of(owner).checkpoint_variables(
        "output/LayerNorm", ln_tag)
    items += self.block_output.checkpoint_variables(
        registry.HOOK_SCOPES["block_output"], branch.adapters, serving)
    return items

  def intermediate(self, x, setup=None, training=False, policy=None,
                   tokens=None):
    """The intermediate dense layer and its activation: [rows, H] -> [rows, I]."""
    intermediate = _dense(self.intermediate_dense, x)
    intermediate = self.intermediate_projection(
        x, intermediate, setup=setup, training=training, policy=policy,
        tokens=tokens)
    if self._fast_gelu:
      return kernels.policy_or_default(policy).gelu(intermediate, training)
    return self.intermediate_act(intermediate)

  def call(self, x, mask_adder, batch, seq, setup=None, training=False,
           seed=None, output_range=None, policy=None, tokens=None):
    """One layer: [batch * seq, H] -> [batch * seq, H].

    With output_range k (a python int), only the first k positions of each
    example are computed after the keys and values: the output is
    [batch * k, H], the same numbers as those rows of the whole output
    (dropout masks included). The classifier needs the first ([CLS]) row of
    the last layer only: the rest of that layer is work nobody reads
    (TF Model Garden's `output_range`). With n branches side by side,
    `batch` counts n * examples (branch-major).
    """
    # x: [batch * seq, H]
    c = self.config
    setup = setup or NO_ADAPTERS
    policy = kernels.policy_or_default(policy)
    hooks = dict(setup=setup, training=training, policy=policy,
                 tokens=tokens)
    rows, residual = seq, x
    attention_args = {}
    if output_range is not None:
      rows = output_range
      residual = first_positions(x, batch, seq, output_range)  # [batch * k, H]
      attention_args["output_range"] = output_range
    attention = self.attention(x, mask_adder, batch, seq, seed=kernels.fold_seed(seed, 0),
                               **hooks, **attention_args)  # [batch * rows, H]
    attention = _dense(self.attention_output_dense, attention)
    attention = policy.token_dropout(attention, c.hidden_dropout_prob,
                                     training, kernels.fold_seed(seed, 1),
                                     batch, rows)
    attention = self.attention_output(attention, residual=residual,
                                      norms=self._attention_norms, **hooks)
    attention = apply_layer_norm(
        self._attention_norms, attention, residual, setup, training, policy,
        self.compute_dtype, self.attention_output.returns_block_output(setup))

    intermediate = self.intermediate(attention, **hooks)
    output = _dense(self.output_dense, intermediate)
    output = self.output_projection(intermediate, output, **hooks)
    output = policy.token_dropout(output, c.hidden_dropout_prob, training,
                                  kernels.fold_seed(seed, 2), batch, rows)
    output = self.ffn_output(output, residual=attention,
                             norms=self._output_norms, **hooks)
    output = apply_layer_norm(
        self._output_norms, output, attention, setup, training, policy,
        self.compute_dtype, self.ffn_output.returns_block_output(setup))
    return self.block_output(output, **hooks)

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    base["adapters"] = [[n, c.to_dict()] for n, c in self.adapter_configs.items()]
    base["index"] = self.index
    return base


def _dense(layer, x):
  """x · kernel + bias of a keras Dense `layer` (see kernels.dense)."""
  return kernels.dense(x, layer.kernel, layer.bias)
