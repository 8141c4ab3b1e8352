"""Adapters for BERT (Houlsby et al., 2019).

An adapter is a small bottleneck network inserted into each transformer block
at named locations; with the base frozen, only adapters, LayerNorms and the
task head are trained.
"""

from adapters.config import LOCATIONS
from adapters.config import PRESETS
from adapters.config import AdapterConfig
from adapters.config import get_preset
from adapters.config import register_preset
from adapters.layers import ADAPTER_TYPES
from adapters.layers import BottleneckAdapter
from adapters.layers import make_adapter
from adapters.layers import register_adapter_type

__all__ = [
    "ADAPTER_TYPES", "AdapterConfig", "BottleneckAdapter", "LOCATIONS",
    "PRESETS", "get_preset", "make_adapter", "register_adapter_type",
    "register_preset",
]
