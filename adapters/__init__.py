"""Adapters for BERT: methods, configs, composition.

An adapter is a small network placed at named hook points of the model (see
`adapters.registry`); with the base frozen, only adapters (with the
LayerNorms their method trains) and task heads are trained. Each method is
one file here that registers itself; `adapters.composition` holds the
blocks that combine several adapters.
"""

from adapters.config import LOCATIONS
from adapters.config import PRESETS
from adapters.config import AdapterConfig
from adapters.config import get_preset
from adapters.config import register_preset
from adapters.registry import HOOK_SCOPES
from adapters.registry import METHODS
from adapters.registry import config_from_dict
from adapters.registry import config_from_json_file
from adapters.registry import get_method
from adapters.registry import register_method
from adapters.bottleneck import BottleneckAdapter  # Registers "bottleneck".
from adapters.bottleneck import BnAdapter  # Registers "bn" and its presets.
from adapters.bottleneck import BnConfig
from adapters.lora import IA3Config
from adapters.lora import LoRAConfig  # Registers "lora", "ia3".
from adapters.lora import LoRALayer
from adapters.prefix_tuning import PrefixTuningConfig  # "prefix_tuning".
from adapters.layer_attention import LayerAttentionConfig  # Basirat's.
from adapters.prompt_tuning import PromptTuningConfig  # "prompt_tuning".
from adapters.union import ConfigUnion  # Registers "union" and "mam".
from adapters.fusion import AdapterFusionConfig
from adapters import composition
from adapters.composition import Average
from adapters.composition import BatchSplit
from adapters.composition import Fuse
from adapters.composition import MultiTask
from adapters.composition import Parallel
from adapters.composition import Stack

__all__ = [
    "AdapterConfig", "BnAdapter", "BnConfig", "BottleneckAdapter",
    "ConfigUnion", "IA3Config", "LoRAConfig", "LoRALayer", "HOOK_SCOPES", "LOCATIONS",
    "LayerAttentionConfig", "PrefixTuningConfig", "PromptTuningConfig",
    "METHODS", "PRESETS", "AdapterFusionConfig", "Average", "BatchSplit",
    "Fuse", "MultiTask", "Parallel",
    "Stack", "composition",
    "config_from_dict", "config_from_json_file", "get_method", "get_preset", "register_method",
    "register_preset",
]
