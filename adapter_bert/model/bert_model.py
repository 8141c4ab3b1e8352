"""The encoder: embeddings, the blocks, the pooler (`BertModel`), and the
model-level layers methods share across blocks.
"""

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
import keras
import tensorflow as tf

from adapter_bert.adapters import gating
from adapter_bert.adapters import registry
from adapter_bert.compute import kernels
from adapter_bert.errors import UserError
from adapter_bert.model.config import MASK_ADDER
from adapter_bert.model.config import as_bert_config
from adapter_bert.model.embeddings import BertEmbeddings
from adapter_bert.model.hooks import AdapterHook
from adapter_bert.model.hooks import NO_ADAPTERS
from adapter_bert.model.hooks import Tag
from adapter_bert.model.hooks import adapter_items
from adapter_bert.model.hooks import dense_variables
from adapter_bert.model.hooks import frozen_names
from adapter_bert.model.hooks import scoped
from adapter_bert.model.hooks import unlocked
from adapter_bert.model.hooks import weight_initializer
from adapter_bert.model.transformer_block import TransformerBlock


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertPooler(keras.layers.Layer):
  """tanh dense on the first token's hidden state."""

  def __init__(self, config, **kwargs):
    super().__init__(**kwargs)
    self.config = as_bert_config(config)
    self.dense = keras.layers.Dense(
        self.config.hidden_size, activation="tanh",
        kernel_initializer=weight_initializer(self.config), name="dense")
    self.dense.build((None, self.config.hidden_size))
    self.built = True

  def call(self, sequence_output):
    # sequence_output: [batch, seq, H] -> [batch, H]
    return self.dense(sequence_output[:, 0, :])

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    return base


@keras.saving.register_keras_serializable(package="adapter_bert")
class BertModel(keras.layers.Layer):
  """The BERT encoder with adapter hook points: embeddings, L blocks, pooler.

  Call with input_ids, input_mask, segment_ids ([batch, seq] int) and the
  active setup; returns (sequence_output [n * batch, seq, H], pooled_output
  [n * batch, H]) for n branches side by side (n = 1 but for Parallel).
  """

  def __init__(self, config, adapters=None, **kwargs):
    super().__init__(**kwargs)
    self.config = as_bert_config(config)
    items = adapter_items(adapters)
    # Each adapter's model-level layer, if its method has one (variables
    # shared by its layers in every block; see adapters.registry).
    self.shared = {}
    for name, adapter_config in items:
      registry.check_fits(adapter_config, self.config)
      layer = registry.shared_for(adapter_config, self.config)
      if layer is not None:
        self.shared[name] = layer
    self.embeddings = BertEmbeddings(self.config, items, self.shared,
                                     name="embeddings")
    self.blocks = [
        TransformerBlock(self.config, items, shared=self.shared, index=i,
                         name="layer_%d" % i)
        for i in range(self.config.num_hidden_layers)
    ]
    self.pooler = BertPooler(self.config, name="pooler")
    # Adapters that read every hidden state of the (frozen) encoder.
    self.encoder_output = AdapterHook("encoder_output", name="encoder_output")
    for name, adapter_config in items:
      self._add_encoder_layers(name, adapter_config)

  def _add_encoder_layers(self, name, adapter_config):
    for point, layer in registry.layers_for(
        adapter_config, self.config, "encoder",
        self.shared.get(name)).items():
      getattr(self, point).add(name, layer)

  def add_adapter(self, name, adapter_config):
    registry.check_fits(adapter_config, self.config)
    shared = registry.shared_for(adapter_config, self.config)
    if shared is not None:
      with unlocked(self):
        self.shared[name] = shared
    self.embeddings.add_adapter(name, adapter_config, shared)
    for block in self.blocks:
      block.add_adapter(name, adapter_config, shared)
    with unlocked(self):
      self._add_encoder_layers(name, adapter_config)

  def delete_adapter(self, name):
    self.embeddings.delete_adapter(name)
    for block in self.blocks:
      block.delete_adapter(name)
    self.encoder_output.remove(name)
    with unlocked(self):
      self.shared.pop(name, None)

  def checkpoint_variables(self, branch, serving=False):
    """[(checkpoint name, variable, tag)] of one branch, in the original's
    order (embeddings, layers, pooler), then the adapters' model-level
    variables. With `serving`, the adapters as saved and served (see
    adapters.registry)."""
    items = scoped("bert/embeddings",
                    self.embeddings.checkpoint_variables(branch, serving))
    for i, block in enumerate(self.blocks):
      items += scoped("bert/encoder/layer_%d" % i,
                       block.checkpoint_variables(branch, serving))
    items += self.encoder_output.checkpoint_variables(
        "bert/" + registry.HOOK_SCOPES["encoder_output"], branch.adapters,
        serving)
    items += dense_variables("bert/pooler/dense", self.pooler.dense)
    for name in branch.adapters:
      layer = self.shared.get(name)
      if layer is None:
        continue
      listed = (layer.serving_checkpoint_variables() if serving and hasattr(
          layer, "serving_checkpoint_variables")
                else layer.checkpoint_variables())
      frozen = frozen_names(layer)
      items += [("bert/" + rel, v, Tag("adapter", name, frozen=rel in frozen))
                for rel, v in listed]
    return items

  def call(self, input_ids, input_mask, segment_ids, setup=None,
           training=False, seed=None, output_range=None, policy=None,
           frozen_states=None):
    """Returns (sequence_output, pooled_output).

    output_range: None, or a python int k: the last layer computes the
    first k positions only and sequence_output is [batch, k, H] (the pooled
    output needs k = 1; same numbers as the whole computation).
    frozen_states: None, or the frozen encoder's states that an
    encoder-level adapter reads, [batch, seq, L', H], computed before
    (data.frozen_activations): the encoder is then not run.
    """
    setup = setup or NO_ADAPTERS
    policy = kernels.policy_or_default(policy)
    if self.encoder_output.is_active(setup):
      return self._read_frozen_encoder(input_ids, input_mask, segment_ids,
                                       setup, training, seed, output_range,
                                       policy, frozen_states)
    if setup.split is not None:
      raise ValueError("BertModel runs one branch or Parallel ones; the "
                       "model divides a BatchSplit or MultiTask batch")
    n = len(setup.branches)
    skip = setup.skip_layers
    base = setup.without_adapters()
    # AdapterDrop: the layers below the first one with adapters are the
    # base model's; Parallel branches run them once, then split the batch.
    lead = 0
    while lead < len(self.blocks) and lead in skip:
      lead += 1
    shared = setup.parallel and lead > 0
    width = 1 if shared else n  # Branches in the batch before layer `lead`.
    shape = tf.shape(input_ids)
    batch, seq = shape[0] * width, shape[1]
    embed_setup = NO_ADAPTERS if shared else (base if 0 in skip else setup)
    embedded = self.embeddings(input_ids, segment_ids, setup=embed_setup,
                               training=training,
                               seed=kernels.fold_seed(seed, 0), policy=policy)
    if self.embeddings.prompts.is_active(embed_setup):
      # Prompt tuning: soft tokens join the sequence (and the mask).
      embedded, input_mask = self.embeddings.prompts(
          embedded, input_mask, setup=embed_setup, training=training,
          policy=policy)
      seq = tf.shape(embedded)[1]

    def layout(width):
      """The additive mask [width * batch, 1, 1, seq] (0 where attended,
      -10000 where padded) and the TokenLayout (where each example's rows
      are: gated adapters average over them), branch-major."""
      mask = tf.cast(input_mask, tf.float32)  # [batch, seq]
      mask = tf.tile(mask, [width, 1]) if width > 1 else mask
      mask_adder = (1.0 - mask[:, tf.newaxis, tf.newaxis, :]) * MASK_ADDER
      return mask_adder, gating.TokenLayout(shape[0] * width, seq, mask)

    mask_adder, tokens = layout(width)
    x = tf.reshape(embedded, [batch * seq, self.config.hidden_size])
    last = len(self.blocks) - 1
    for i, block in enumerate(self.blocks):
      if shared and i == lead:
        x = tf.tile(x, [n, 1])  # [n * batch * seq, H], branch-major.
        batch *= n
        mask_adder, tokens = layout(n)
      block_args = {"output_range": output_range} if (
          i == last and output_range is not None) else {}
      block_setup = (NO_ADAPTERS if shared and i < lead else
                     base if i in skip else setup)
      x = block(x, mask_adder, batch, seq, setup=block_setup,
                training=training, seed=kernels.fold_seed(seed, i + 1),
                policy=policy, tokens=tokens, **block_args)
    if shared and lead == len(self.blocks):
      x = tf.tile(x, [n, 1])  # Every layer skipped: the branches differ
      batch *= n              # in their heads only.
    rows = seq if output_range is None or not self.blocks else output_range
    sequence_output = tf.reshape(x, [batch, rows, self.config.hidden_size])
    pooled_output = self.pooler(sequence_output)
    return sequence_output, pooled_output

  def token_rows(self, sequence, setup, branch):
    """A branch's rows of `sequence` that are input tokens: without the
    soft tokens its prompt tuning put in (none where layer 0 is skipped)."""
    if 0 in setup.skip_layers:
      return sequence
    for layer in reversed(self.embeddings.prompts.branch_layers(branch)):
      sequence = layer.token_rows(sequence)
    return sequence

  def frozen_states(self, input_ids, input_mask, segment_ids, setup,
                    policy=None):
    """The frozen encoder's hidden states that the setup's encoder-level
    adapter reads, in inference mode: [batch, seq, L', H] (L' of the
    embedding output and the L layers' outputs), cut from the gradient."""
    shape = tf.shape(input_ids)
    batch, seq = shape[0], shape[1]
    h = self.config.hidden_size
    embedded = self.embeddings(input_ids, segment_ids, training=False,
                               policy=policy)  # [batch, seq, H]
    mask = tf.cast(input_mask, tf.float32)[:, tf.newaxis, tf.newaxis, :]
    mask_adder = (1.0 - mask) * MASK_ADDER
    x = tf.reshape(embedded, [batch * seq, h])
    states = [embedded]
    for block in self.blocks:
      x = block(x, mask_adder, batch, seq, training=False, policy=policy)
      states.append(tf.reshape(x, [batch, seq, h]))
    layer, = self.encoder_output.branch_layers(setup.branches[0])
    return tf.stop_gradient(tf.stack([states[i] for i in layer.read_layers],
                                     axis=2))

  def _read_frozen_encoder(self, input_ids, input_mask, segment_ids, setup,
                           training, seed, output_range, policy,
                           frozen_states=None):
    """An encoder_output adapter (layer attention) on the frozen encoder.

    The encoder runs in inference mode and its hidden states are cut from
    the gradient: training computes nothing below the adapter (and nothing
    at all of the encoder with `frozen_states` given). The pooled output is
    the adapter's first ([CLS]) row (not the frozen pooler).
    """
    if setup.parallel or len(setup.branches[0].adapters) > 1:
      raise UserError("a layer_attention adapter reads the frozen encoder: "
                      "it runs alone, not stacked or side by side with "
                      "other adapters (%s)" % ", ".join(
                          n for b in setup.branches for n in b.adapters))
    if frozen_states is None:
      frozen_states = self.frozen_states(input_ids, input_mask, segment_ids,
                                         setup, policy)
    frozen_states = tf.cast(frozen_states, self.compute_dtype)
    layer, = self.encoder_output.branch_layers(setup.branches[0])
    sequence_output = layer(frozen_states, input_mask, training=training,
                            policy=policy,
                            seed=kernels.fold_seed(seed, len(self.blocks) + 1),
                            output_range=output_range)
    return sequence_output, sequence_output[:, 0]

  def get_config(self):
    base = super().get_config()
    base["config"] = self.config.to_dict()
    base["adapters"] = self.embeddings.get_config()["adapters"]
    return base
