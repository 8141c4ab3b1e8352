"""Adapters for BERT: methods, configs, composition.

An adapter is a small network placed at named hook points of the model (see
`adapters.registry`); with the base frozen, only adapters (with the
LayerNorms their method trains) and task heads are trained. Each method is
one file here that registers itself; `adapters.composition` holds the
blocks that combine several adapters.
"""

from adapter_bert.adapters.config import PRESETS
from adapter_bert.adapters.config import get_preset
from adapter_bert.adapters.config import register_preset
from adapter_bert.adapters.registry import HOOK_SCOPES
from adapter_bert.adapters.registry import METHODS
from adapter_bert.adapters.registry import config_from_dict
from adapter_bert.adapters.registry import config_from_json_file
from adapter_bert.adapters.registry import get_method
from adapter_bert.adapters.registry import register_method
from adapter_bert.adapters.bottleneck import LOCATIONS
from adapter_bert.adapters.bottleneck import AdapterConfig  # adapter-bert's.
from adapter_bert.adapters.bottleneck import BottleneckAdapter  # Registers "bottleneck".
from adapter_bert.adapters.bottleneck import BnAdapter  # Registers "bn" and its presets.
from adapter_bert.adapters.bottleneck import BnConfig
from adapter_bert.adapters.adapter_plus import AdapterPlusConfig  # "adapter_plus".
from adapter_bert.adapters.lora import IA3Config
from adapter_bert.adapters.lora import LoRAConfig  # Registers "lora", "ia3".
from adapter_bert.adapters.lora import LoRALayer
from adapter_bert.adapters.vera import VeraConfig  # Registers "vera".
from adapter_bert.adapters.dora import DoRAConfig  # Registers "dora".
from adapter_bert.adapters.dvora import DvoRAConfig  # Registers "dvora".
from adapter_bert.adapters.mtl_lora import MTLLoRAConfig  # Registers "mtl_lora".
from adapter_bert.adapters.prefix_tuning import PrefixTuningConfig  # "prefix_tuning".
from adapter_bert.adapters.reft import DiReftConfig
from adapter_bert.adapters.reft import LoReftConfig
from adapter_bert.adapters.reft import NoReftConfig
from adapter_bert.adapters.reft import ReftConfig  # "reft": loreft, noreft, direft.
from adapter_bert.adapters.layer_attention import LayerAttentionConfig  # Basirat's.
from adapter_bert.adapters.prompt_tuning import PromptTuningConfig  # "prompt_tuning".
from adapter_bert.adapters.union import ConfigUnion  # Registers "union" and "mam".
from adapter_bert.adapters.fusion import AdapterFusionConfig
from adapter_bert.adapters import composition
from adapter_bert.adapters.composition import Average
from adapter_bert.adapters.composition import BatchSplit
from adapter_bert.adapters.composition import Fuse
from adapter_bert.adapters.composition import MultiTask
from adapter_bert.adapters.composition import Parallel
from adapter_bert.adapters.composition import Stack

__all__ = [
    "AdapterConfig", "AdapterPlusConfig", "BnAdapter", "BnConfig", "BottleneckAdapter",
    "ConfigUnion", "DiReftConfig", "DoRAConfig", "DvoRAConfig", "IA3Config", "LoRAConfig", "MTLLoRAConfig", "LoRALayer", "HOOK_SCOPES", "LOCATIONS",
    "LayerAttentionConfig", "LoReftConfig", "NoReftConfig",
    "PrefixTuningConfig", "PromptTuningConfig", "ReftConfig",
    "METHODS", "PRESETS", "AdapterFusionConfig", "Average", "BatchSplit",
    "Fuse", "MultiTask", "Parallel",
    "Stack", "VeraConfig", "composition",
    "config_from_dict", "config_from_json_file", "get_method", "get_preset", "register_method",
    "register_preset",
]
