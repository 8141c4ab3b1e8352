"""Adapter+ (Steitz & Roth, CVPR 2024), AdapterHub's `AdapterPlusConfig`.

A sequential bottleneck after the feed-forward output only, read after the
block's LayerNorm, whose output is the block's output (no LayerNorm after
it: "post-adapter" placement), with

  up = s ⊙ DropPath(W_up·gelu(W_down·LN(h + r) + b1) + b2)
  out = LN(h + r) + up

where s is a trained per-channel vector (starting at ones), W_down and W_up
start as Houlsby's (truncated normal, std 0.01, within +-0.02; zero biases),
and DropPath drops an example's whole adapter path with probability
`stochastic_depth` while training (stochastic depth), scaling the kept ones
by 1 / (1 - p). The bottleneck is hidden_size // 96 (8 on BERT-base).

It is AdapterHub's bottleneck family with other defaults (AdapterHub too
saves it as a plain bottleneck config), so its layers, checkpoint names and
AdapterHub files are the "bn" method's (adapters.bottleneck); this file
holds the defaults and the preset `adapter_plus`.
"""

import dataclasses
from typing import Any, Union

from adapter_bert.adapters.bottleneck import BnConfig
from adapter_bert.adapters.config import OtherDefaults
from adapter_bert.adapters.config import register_preset


@dataclasses.dataclass(frozen=True, eq=False)
class AdapterPlusConfig(OtherDefaults, BnConfig):
  """AdapterHub's AdapterPlusConfig: BnConfig with Adapter+'s defaults.

  It equals the BnConfig with the same fields (what a saved Adapter+
  reads back as).
  """
  original_ln_after: bool = False
  original_ln_before: bool = True
  residual_before_ln: Union[bool, str] = False
  stochastic_depth: float = 0.1
  init_weights: str = "houlsby"
  scaling: Union[float, str] = "channel"
  mh_adapter: bool = False
  output_adapter: bool = True
  reduction_factor: Any = 96
  non_linearity: str = "gelu"


register_preset("adapter_plus", AdapterPlusConfig())
