"""Prompt tuning (Lester et al. 2021), as AdapterHub has it.

`prompt_length` trained vectors ("soft tokens") join the embedding output
(after the embeddings' LayerNorm and dropout; the prompts get neither), in
front of the sequence (`combine="prefix"`) or after its first token
(`"prefix_after_bos"`); the attention mask grows by ones for them:

  x' = [P; x]  or  [x_0; P; x_1..]      [batch, prompt + seq, H]

Every later layer sees the longer sequence, so the encoder's output has
`prompt_length` more rows; a classifier reads row 0 as without prompts
(with "prefix" that is the first prompt's, as in AdapterHub).

Checkpoint name: `bert/embeddings/prompt_tuning/prompt_embedding`
[prompt, H], initialized U(-random_uniform_scale, +random_uniform_scale).
"""

import dataclasses
from typing import Optional

import keras
import tensorflow as tf

from adapter_bert.adapters import registry
from adapter_bert.adapters.config import MethodConfig
from adapter_bert.adapters.config import check_field_types
from adapter_bert.adapters.config import check_choice
from adapter_bert.adapters.config import check_range
from adapter_bert.adapters.config import register_preset
from adapter_bert.adapters.hub_layout import AdapterHubLayout
from adapter_bert.adapters.hub_layout import HubTensor
from adapter_bert.errors import UserError


@dataclasses.dataclass(frozen=True)
class PromptTuningConfig(MethodConfig):
  """AdapterHub's PromptTuningConfig fields and defaults.

  Attributes:
    prompt_length: soft tokens added.
    prompt_init: "random_uniform" ("from_string", which needs AdapterHub's
      tokenizer at adapter creation, is refused).
    prompt_init_text: the text of "from_string".
    random_uniform_scale: the bound of the uniform initialization.
    combine: "prefix" or "prefix_after_bos".
    init_weights_seed: seed of the initial values.
  """
  prompt_length: int = 10
  prompt_init: str = "random_uniform"
  prompt_init_text: Optional[str] = None
  random_uniform_scale: float = 0.5
  combine: str = "prefix"
  init_weights_seed: Optional[int] = None
  kind: str = "prompt_tuning"

  architecture = "prompt_tuning"

  def __post_init__(self):
    check_field_types(self)
    check_choice(self, "kind", ("prompt_tuning",))
    check_choice(self, "combine", ("prefix", "prefix_after_bos"))
    if self.prompt_init == "from_string":
      raise UserError("prompt_tuning adapter config: prompt_init="
                      "'from_string' is not supported by this toolkit yet; "
                      "use 'random_uniform'")
    check_choice(self, "prompt_init", ("random_uniform",))
    if (not isinstance(self.prompt_length, int)
        or isinstance(self.prompt_length, bool) or self.prompt_length < 1):
      raise UserError("prompt_tuning adapter config: prompt_length=%r must be "
                      "an integer >= 1" % (self.prompt_length,))
    check_range(self, "random_uniform_scale", 0.0, low_open=True)


@keras.saving.register_keras_serializable(package="adapter_bert")
class PromptLayer(keras.layers.Layer):
  """The soft tokens at the `prompts` hook point of the embeddings."""

  def __init__(self, config, hidden_size, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.hidden_size = int(hidden_size)
    scale = config.random_uniform_scale
    self.prompt_embedding = self.add_weight(
        name="prompt_embedding", shape=(config.prompt_length, hidden_size),
        initializer=keras.initializers.RandomUniform(
            -scale, scale, seed=config.init_weights_seed))
    self.built = True

  def checkpoint_variables(self):
    """[(name relative to `embeddings/`, variable)]."""
    return [("prompt_tuning/prompt_embedding", self.prompt_embedding)]

  def call(self, embedded, input_mask, training=False, policy=None):
    """embedded [batch, seq, H], input_mask [batch, seq] -> both with the
    prompts in (seq + prompt_length)."""
    del training, policy
    batch = tf.shape(embedded)[0]
    length = self.config.prompt_length
    prompts = tf.tile(tf.cast(self.prompt_embedding, embedded.dtype)[
        tf.newaxis], [batch, 1, 1])  # [batch, P, H]
    ones = tf.ones([batch, length], input_mask.dtype)
    if self.config.combine == "prefix":
      return (tf.concat([prompts, embedded], axis=1),
              tf.concat([ones, input_mask], axis=1))
    return (tf.concat([embedded[:, :1], prompts, embedded[:, 1:]], axis=1),
            tf.concat([input_mask[:, :1], ones, input_mask[:, 1:]], axis=1))

  def token_rows(self, sequence):
    """The inverse on an output: sequence [batch, seq + P, H] -> the input
    tokens' rows [batch, seq, H] (what a tagging head reads)."""
    length = self.config.prompt_length
    if self.config.combine == "prefix":
      return sequence[:, length:]
    return tf.concat([sequence[:, :1], sequence[:, 1 + length:]], axis=1)

  def get_config(self):
    base = super().get_config()
    base.update(config=self.config.to_dict(), hidden_size=self.hidden_size)
    return base


def _layers_for(config, bert_config, where):
  if where != "embeddings":
    return {}
  return {"prompts": PromptLayer(config, bert_config.hidden_size,
                                 name="prompt_tuning")}


registry.register_method(
    "prompt_tuning", PromptTuningConfig, _layers_for,
    adapterhub=AdapterHubLayout((HubTensor(
        "bert/embeddings/prompt_tuning/prompt_embedding",
        "bert.prompt_tuning.prompt_tunings.{adapter}.prompt_embedding."
        "weight"),)))

PROMPT_TUNING = PromptTuningConfig()
register_preset("prompt_tuning", PROMPT_TUNING)
