"""The embedding layer: word, position and token-type embeddings, LayerNorm and
dropout, with the embedding_output and prompts hook points.
"""

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
import keras
import tensorflow as tf

from adapter_bert.adapters import registry
from adapter_bert.compute import kernels
from adapter_bert.model.config import as_bert_config
from adapter_bert.model.hooks import BASE
from adapter_bert.model.hooks import LayerNormCopies
from adapter_bert.model.hooks import NO_ADAPTERS
from adapter_bert.model.hooks import Tag
from adapter_bert.model.hooks import adapter_items
from adapter_bert.model.hooks import add_hooks
from adapter_bert.model.hooks import copy_layer_norm
from adapter_bert.model.hooks import new_layer_norm
from adapter_bert.model.hooks import stacked_layer_norm
from adapter_bert.model.hooks import strip_scope
from adapter_bert.model.hooks import unlocked
from adapter_bert.model.hooks import weight_initializer


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertEmbeddings(keras.layers.Layer):
  """Word + token-type + position embeddings, then LayerNorm and dropout.

  Hook point: `embedding_output` (after the dropout).
  """

  def __init__(self, config, adapters=None, shared=None, **kwargs):
    super().__init__(**kwargs)
    self.config = as_bert_config(config)
    c = self.config
    init = weight_initializer(c)
    self.word_embeddings = self.add_weight(
        name="word_embeddings", shape=(c.vocab_size, c.hidden_size),
        initializer=init, autocast=False)
    self.token_type_embeddings = self.add_weight(
        name="token_type_embeddings", shape=(c.type_vocab_size, c.hidden_size),
        initializer=init, autocast=False)
    self.position_embeddings = self.add_weight(
        name="position_embeddings",
        shape=(c.max_position_embeddings, c.hidden_size), initializer=init,
        autocast=False)
    self.layer_norm = new_layer_norm("LayerNorm")
    self.layer_norm.build((None, None, c.hidden_size))
    self.layer_norms = {}  # Each adapter's copy, by adapter name.
    self._norms = LayerNormCopies(self, "layer_norm", "layer_norms")
    add_hooks(self, registry.MODEL_HOOKS)
    self.adapter_configs = {}
    for name, adapter_config in adapter_items(adapters):
      self.add_adapter(name, adapter_config, (shared or {}).get(name))

  def add_adapter(self, name, adapter_config, shared=None):
    """Adds adapter `name`'s layers (and LayerNorm copy, if it trains one);
    `shared` is its model-level layer, if its method has one."""
    with unlocked(self):
      self.adapter_configs[name] = adapter_config
      if registry.owns_layer_norms(adapter_config):
        self.layer_norms[name] = copy_layer_norm(self.layer_norm, "LayerNorm")
      for point, layer in registry.layers_for(
          adapter_config, self.config, "embeddings", shared).items():
        getattr(self, point).add(name, layer)

  def delete_adapter(self, name):
    with unlocked(self):
      self.adapter_configs.pop(name, None)
      self.layer_norms.pop(name, None)
      for point in registry.MODEL_HOOKS:
        getattr(self, point).remove(name)

  def checkpoint_variables(self, branch, serving=False):
    """[(name under `embeddings/`, variable, tag)] of one branch."""
    owner = branch.layer_norms
    items = [("word_embeddings", self.word_embeddings, BASE),
             ("token_type_embeddings", self.token_type_embeddings, BASE),
             ("position_embeddings", self.position_embeddings, BASE)]
    items += self._norms.of(owner).checkpoint_variables(
        "LayerNorm", Tag("layer_norm", owner))
    for point in registry.MODEL_HOOKS:
      items += strip_scope(getattr(self, point).checkpoint_variables(
          registry.HOOK_SCOPES[point], branch.adapters, serving),
                            "embeddings/")
    return items

  def call(self, input_ids, segment_ids, setup=None, training=False,
           seed=None, policy=None):
    """[batch, seq] ids -> [n * batch, seq, H] (n branches side by side)."""
    setup = setup or NO_ADAPTERS
    policy = kernels.policy_or_default(policy)
    seq_length = tf.shape(input_ids)[1]
    output = tf.gather(self.word_embeddings, input_ids)  # [batch, seq, H]
    output += tf.gather(self.token_type_embeddings, segment_ids)
    # The original's last addition, done by the LayerNorm kernel (as the
    # layers' residual sums are), so that one compiled LayerNorm serves all.
    positions = tf.broadcast_to(
        self.position_embeddings[tf.newaxis, :seq_length, :],
        tf.shape(output))  # [batch, seq, H]
    if setup.parallel:
      # The lookups once; each branch's LayerNorm on the same sum.
      shape = tf.shape(output)
      summed = tf.reshape(output + positions, [1, -1, shape[-1]])
      output = stacked_layer_norm(
          [self._norms.of(b.layer_norms) for b in setup.branches], summed,
          None, policy)  # [n, batch * seq, H]
      output = tf.reshape(output, [-1, shape[1], shape[2]])
    else:
      output = self._norms.of(setup.branches[0].layer_norms)(
          output, residual=positions, training=training, policy=policy)
    output = policy.dropout(output, self.config.hidden_dropout_prob, training,
                            seed)
    output = tf.cast(output, self.compute_dtype)
    if self.embedding_output.is_active(setup):
      shape = tf.shape(output)
      output = tf.reshape(self.embedding_output(
          tf.reshape(output, [-1, shape[-1]]), setup=setup,
          training=training, policy=policy), shape)
    return output

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    base["adapters"] = [[n, c.to_dict()] for n, c in self.adapter_configs.items()]
    return base
