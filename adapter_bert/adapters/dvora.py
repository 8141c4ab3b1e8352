"""DVoRA, as AdapterHub 1.3.0 has it ("dvora"): DoRA's magnitude on VeRA.

VeRA's layer (adapters.vera: the adapter's frozen shared pair A, B and the
trained D, V) with DoRA's trained magnitude m per output (adapters.dora):

  (m / ||W + A·D·B·V||) * (x·W + b + dropout(x)·A·D·B·V·alpha/r)

with the norm of each output's column taken without alpha / r, the bias
inside the scale and m starting as the base's column norms, as AdapterHub
computes it. On BERT-base (q and v): VeRA's 14,157,312 + 12 x 2 x 768 =
14,175,744 trained parameters (the shared pair's 12,288 frozen). DVoRA
folds into the weights as DoRA does.
"""

import dataclasses

import keras

from adapter_bert.adapters import registry
from adapter_bert.adapters.config import register_preset
from adapter_bert.adapters.dora import DoRAMagnitude
from adapter_bert.adapters.hub_layout import AdapterHubLayout
from adapter_bert.adapters.hub_layout import HubTensor
from adapter_bert.adapters.lora import HUB_PLACES
from adapter_bert.adapters.lora import HUB_SCOPE
from adapter_bert.adapters.lora import OURS_SCOPE
from adapter_bert.adapters.vera import ADAPTERHUB_LAYOUT as VERA_LAYOUT
from adapter_bert.adapters.vera import VeraConfig
from adapter_bert.adapters.vera import VeraLayer
from adapter_bert.adapters.vera import shared_pair


@dataclasses.dataclass(frozen=True)
class DvoRAConfig(VeraConfig):
  """AdapterHub's DvoRAConfig: VeraConfig's fields with use_dora=True."""
  use_dora: bool = True
  kind: str = "dvora"

  dora = True


def _recognizes(d):
  """AdapterHub's test: a "lora" config with a float vera_d or vera_b and
  use_dora."""
  return d.get("use_dora") is True and (
      isinstance(d.get("vera_d"), float)
      or isinstance(d.get("vera_b"), float))


@keras.saving.register_keras_serializable(package="adapter_bert")
class DvoRALayer(DoRAMagnitude, VeraLayer):
  """DVoRA on one dense projection: VeraLayer's variables (`vera_D`,
  `vera_B`, the gate) and `m` [out]."""

  def __init__(self, config, pair, **kwargs):
    super().__init__(config, pair, **kwargs)
    self.add_magnitude()

  def checkpoint_variables(self):
    return super().checkpoint_variables() + [("m", self.m)]

  def call(self, x, projected, training=False, policy=None, tokens=None):
    del policy
    if self.merged:
      return projected
    dtype = projected.dtype
    delta = self.branch(keras.ops.cast(x, dtype), dtype, training, tokens)
    return (projected + delta) * self.magnitude_scale(dtype)


def _layers_for(config, bert_config, where, pair):
  del bert_config
  if where == "embeddings" or where in config.leave_out:
    return {}
  return {point: DvoRALayer(config, pair, name=point + "_dvora")
          for point in config.hook_points()}


registry.register_method(
    "dvora", DvoRAConfig, _layers_for, shared_for=shared_pair,
    recognizes=_recognizes,
    adapterhub=VERA_LAYOUT + AdapterHubLayout((HubTensor(
        OURS_SCOPE + "m", HUB_SCOPE + "m.weight", theirs_shape="column",
        choices=HUB_PLACES),)))

DVORA = DvoRAConfig()
register_preset("dvora", DVORA)
