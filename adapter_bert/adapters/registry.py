"""The registry of adapter methods and the hook points they plug into.

An adapter method is one file under `adapters/` that calls `register_method`
with its config class and a function building its layers; nothing else in
the toolkit names it. A method's layers sit at named hook points of the
model; each layer declares the checkpoint names of its variables, relative
to the hook point's scope.

Hook points, and what a layer placed there is called with:

  embedding_output   the embeddings after LayerNorm and dropout:
                     layer(x [batch * seq, H]) -> [batch * seq, H]
  prompts            the embedding output and the mask, which it may
                     lengthen: layer(x [batch, seq, H], input_mask
                     [batch, seq]) -> (x, input_mask) [batch, seq', ...]
  query, key, value  a projection of the attention input:
                     layer(x [rows, H], projected [rows, H]) -> [rows, H]
  attention_keys_values  the attention's keys and values per head:
                     layer(k, v [batch, heads, seq, size], mask_adder
                     [batch, 1, 1, seq]) -> (k, v, mask_adder)
  attention_output   after the attention output projection and its dropout,
                     before the residual LayerNorm: layer(x) -> x
  intermediate_projection  the feed-forward's intermediate projection,
                     before its activation: layer(x [rows, H],
                     projected [rows, I]) -> [rows, I]
  output_projection  the feed-forward's output projection, before its
                     dropout: layer(x [rows, I], projected [rows, H]) -> [rows, H]
  ffn_output         after the feed-forward output projection and its
                     dropout, before the residual LayerNorm: layer(x) -> x
  block_output       the block's output (after its last LayerNorm):
                     layer(x [rows, H]) -> [rows, H], rows example-major
                     (seq per example, or output_range's first k); the
                     first adapter of a Stack only, as in AdapterHub
  encoder_output     the encoder's output, from all its hidden states
                     (methods registered with `encoder_level=True`; the
                     encoder then runs frozen, in inference mode):
                     layer(hidden_states [L+1 of [batch, seq, H]],
                     input_mask [batch, seq]) -> [batch, seq, H]

A method may also hold variables at the model level, shared by its layers
in every block (prefix tuning's reparametrisation MLP, Compacter's shared
PHM rule): `shared_for(config, bert_config)` builds that one layer per
adapter, and `layers_for` gets it. A shared layer lists its variables
(names relative to `bert/`) with `checkpoint_variables()`, and those the
adapter keeps as saved and served with `serving_checkpoint_variables()`:
prefix tuning serves what its MLP computes, not the MLP (AdapterHub's
"eject"), so its pool lists none, each block's layer gives its computed
values (`serving_variables()`), and `serving_config(config)` is the config
that builds layers holding those values directly.

Every layer's call also takes `training` and `policy` (the KernelPolicy). A
layer at a block's residual hook point (attention_output, ffn_output) whose
class sets `uses_block_residual = True` is also called with `residual` (the
sub-layer's input) and `layer_norm` (the LayerNorm that follows, the one its
branch uses): what it returns goes into LayerNorm(. + residual).
"""

import dataclasses
import json
from typing import Callable, Mapping, Optional

from adapter_bert.errors import UserError
from adapter_bert.errors import clip_value

# Hook point -> checkpoint scope of the layers placed there, relative to the
# block (`bert/encoder/layer_<i>/`) or, for the embeddings, to `bert/`.
HOOK_SCOPES = {
    "embedding_output": "embeddings",
    "prompts": "embeddings",
    "query": "attention/self/query",
    "key": "attention/self/key",
    "value": "attention/self/value",
    "attention_keys_values": "attention/self",
    "attention_output": "attention/output",
    "intermediate_projection": "intermediate/dense",
    "output_projection": "output/dense",
    "ffn_output": "output",
    "block_output": "output",
    "encoder_output": "encoder",
}
BLOCK_HOOKS = ("query", "key", "value", "attention_keys_values",
               "attention_output", "intermediate_projection",
               "output_projection", "ffn_output", "block_output")
MODEL_HOOKS = ("embedding_output", "prompts")
ENCODER_HOOKS = ("encoder_output",)
# Hook points on the residual stream: layer(x) -> x.
RESIDUAL_HOOKS = ("embedding_output", "attention_output", "ffn_output",
                  "block_output")
# Hook points where only the first adapter of a Stack acts (AdapterHub's
# invertible adapters and prompts: MAD-X's language adapter is the first;
# its ReFT interventions).
FIRST_ADAPTER_HOOKS = ("embedding_output", "prompts", "block_output")
PROJECTION_HOOKS = ("query", "key", "value", "intermediate_projection",
                    "output_projection")


@dataclasses.dataclass(frozen=True)
class AdapterMethod:
  """A registered adapter method.

  Attributes:
    kind: the method's name, the `kind` field of its config.
    config_cls: its config class (frozen dataclass with `kind`, `from_dict`,
      `to_dict`).
    layers_for: callable(config, bert_config, where) -> {hook point: Keras
      layer}, where `where` is a block index or "embeddings".
    owns_layer_norms: callable(config) -> bool: whether an adapter of this
      config trains LayerNorms, and so holds its own copy of them.
    shared_for: None, or callable(config, bert_config) -> a Keras layer (or
      None) of model-level variables; `layers_for` then takes it as a
      fourth argument.
    serving_config: None, or callable(config) -> the config of the adapter
      as saved and served.
    encoder_level: the method also has a layer at `encoder_output`
      (`layers_for` is called with where="encoder").
    parts: None, or callable(config) -> the configs a config combines
      (ConfigUnion's); each part is then asked for its own capabilities.
    resize: None, or callable(config, size, bert_config) -> the config
      with a bottleneck of `size` (the command line's --adapter_size).
    fusion_refusal: None (an adapter of this method is never fused), or
      callable(config) -> None when AdapterFusion can combine an adapter of
      `config`, else why it cannot.
    adapterhub: None (AdapterHub's files do not hold this method), or the
      hub_layout.AdapterHubLayout naming its variables there.
    combine_strategies: {name: callable(config, weights, sources, linear,
      svd_rank) -> (config of the average, {checkpoint name: value})}: the
      method's ways of averaging adapters besides "linear" (the weighted sum
      of every variable, which every method has). `sources` are the
      adapters' {checkpoint name: float64 array}, `linear` their weighted
      sum; names the strategy leaves out take the linear value.
    recognizes: None, or callable(config dict) -> whether a dict without
      `kind` is this method's: one without `architecture` (AdapterHub's
      bottleneck configs carry neither), or one whose `architecture` other
      methods share (AdapterHub's VeRA config is a "lora" one).
    default: dicts no method recognizes are this method's (one method).
  """
  kind: str
  config_cls: type
  layers_for: Callable
  owns_layer_norms: Callable = lambda config: False
  shared_for: Optional[Callable] = None
  serving_config: Optional[Callable] = None
  encoder_level: bool = False
  fusion_refusal: Optional[Callable] = None
  parts: Optional[Callable] = None
  resize: Optional[Callable] = None
  adapterhub: Optional[object] = None
  combine_strategies: Mapping[str, Callable] = dataclasses.field(
      default_factory=dict)
  recognizes: Optional[Callable] = None
  default: bool = False


METHODS = {}


def register_method(kind, config_cls, layers_for, owns_layer_norms=None,
                    **capabilities):
  """Registers an adapter method under `kind`.

  Args:
    kind, config_cls, layers_for, owns_layer_norms: see AdapterMethod.
    **capabilities: AdapterMethod's other fields (shared_for,
      serving_config, encoder_level, fusion_refusal, parts, resize,
      adapterhub, combine_strategies, recognizes, default).

  Returns:
    The AdapterMethod.
  """
  method = AdapterMethod(kind, config_cls, layers_for,
                         owns_layer_norms or (lambda config: False),
                         **capabilities)
  METHODS[kind] = method
  return method


def get_method(kind):
  """The AdapterMethod registered under `kind`.

  Raises:
    UserError: for an unknown kind, listing the known ones.
  """
  try:
    return METHODS[kind]
  except KeyError:
    raise UserError("unknown adapter method %r; known: %s"
                    % (kind, ", ".join(sorted(METHODS)))) from None


def method_of(config):
  return get_method(getattr(config, "kind", None))


def config_from_dict(d, source="adapter config"):
  """The config of whichever method `d["kind"]` names (bottleneck default).

  Raises:
    UserError: for a non-object, an unknown method or unknown fields.
  """
  if not isinstance(d, dict):
    raise UserError("%s: expected a JSON object, got %s"
                    % (source, type(d).__name__))
  try:
    return get_method(kind_of_dict(d)).config_cls.from_dict(d)
  except UserError as e:
    raise UserError("%s: %s" % (source, e)) from None


def config_to_json(config):
  """A method's config as JSON text (what config_from_dict reads back)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def config_from_json_file(path):
  """The config in a JSON file: a config object, or AdapterHub's
  adapter_config.json (the config under "config").

  Raises:
    UserError: naming the file, if it cannot be read, is not JSON or holds
      no valid config.
  """
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except OSError as e:
    raise UserError("cannot read %s: %s" % (path, e.strerror)) from None
  except ValueError as e:
    raise UserError("%s is not valid JSON: %s" % (path, e)) from None
  if isinstance(data, dict) and isinstance(data.get("config"), dict):
    data = data["config"]
  return config_from_dict(data, source=path)


def kind_of_dict(d):
  """The method `kind` a config dict is for: its `kind`; else, among the
  methods whose config class has AdapterHub's `architecture`, the first
  that recognizes it, else the first without `recognizes` (its config's
  from_dict then tells its kinds apart); else the method that recognizes
  it, else the default method."""
  if "kind" in d:
    return d["kind"]
  architecture = d.get("architecture")
  if architecture is not None:
    # AdapterHub names several methods' configs by one architecture (VeRA's
    # is a "lora" config holding vera_d / vera_b): a method that recognizes
    # the dict wins, else the one that recognizes none.
    same = [kind for kind, method in METHODS.items() if architecture in (
        (getattr(method.config_cls, "architecture", None),)
        + tuple(getattr(method.config_cls, "architecture_aliases", ())))]
    for kind in same:
      if METHODS[kind].recognizes is not None and METHODS[kind].recognizes(d):
        return kind
    for kind in same:
      if METHODS[kind].recognizes is None:
        return kind
    if same:
      return same[0]
    return architecture  # Refused by get_method, naming the known ones.
  for kind, method in METHODS.items():
    if method.recognizes is not None and method.recognizes(d):
      return kind
  return next((k for k, m in METHODS.items() if m.default), None)


class LayerRef:
  """Holds a model-level shared layer inside a block's layer without making
  it a sub-layer there (it is listed, and its variables counted, once: at
  the model)."""

  def __init__(self, layer):
    self.layer = layer


def shared_for(config, bert_config):
  """The model-level layer of an adapter of `config`, or None."""
  method = method_of(config)
  if method.shared_for is None:
    return None
  return method.shared_for(config, bert_config)


def serving_config(config):
  """The config of an adapter of `config` as saved and served."""
  method = method_of(config)
  if method.serving_config is None:
    return config
  return method.serving_config(config)


def layers_for(config, bert_config, where, shared=None):
  """{hook point: new layer} of an adapter of `config` at `where`.

  Args:
    shared: the adapter's model-level layer (`shared_for`), if any.

  Raises:
    UserError: if the method names a hook point the model does not have.
  """
  method = method_of(config)
  if where == "encoder" and not is_encoder_level(config):
    return {}
  if method.shared_for is not None:
    layers = method.layers_for(config, bert_config, where, shared)
  else:
    layers = method.layers_for(config, bert_config, where)
  allowed = {"embeddings": MODEL_HOOKS, "encoder": ENCODER_HOOKS}.get(
      where, BLOCK_HOOKS)
  unknown = sorted(set(layers) - set(allowed))
  if unknown:
    raise UserError("adapter method %r puts layers at unknown hook point(s) "
                    "%s; expected %s" % (config.kind, ", ".join(unknown),
                                         ", ".join(allowed)))
  return layers


def is_encoder_level(config):
  """Whether an adapter of `config` reads the encoder's hidden states."""
  return any(method_of(c).encoder_level for c in parts_of(config))


# Hook points whose layers cannot run several branches side by side in one
# pass (Parallel): they change the sequence (prompts), the keys (prefixes)
# or read the whole frozen encoder (layer attention).
NOT_SIDE_BY_SIDE_HOOKS = ("prompts", "attention_keys_values",
                          "encoder_output")


def runs_side_by_side(hook_points):
  """Whether an adapter with layers at `hook_points` can run in a Parallel
  block (see `BertAdapterModel.hook_points`)."""
  return not set(hook_points) & set(NOT_SIDE_BY_SIDE_HOOKS)


def owns_layer_norms(config):
  return bool(method_of(config).owns_layer_norms(config))


def fusion_refusal(config):
  """None when AdapterFusion can combine an adapter of `config`, else why
  it cannot (the method's own answer)."""
  method = method_of(config)
  if method.fusion_refusal is None:
    return ("AdapterFusion combines sequential bottleneck adapters "
            "(pfeiffer, houlsby, compacter, ...)")
  return method.fusion_refusal(config)


def parts_of(config):
  """The single-method configs an adapter of `config` is made of: the
  config itself, or its method's parts (a ConfigUnion's), flattened."""
  method = method_of(config)
  if method.parts is None:
    return [config]
  return [p for part in method.parts(config) for p in parts_of(part)]


def check_fits(config, bert_config):
  """Refuses a config naming a layer the model lacks (AdapterHub's
  `leave_out`, in any part of a union).

  Raises:
    UserError: naming the field, the layer and the model's layers.
  """
  layers = bert_config.num_hidden_layers
  for part in parts_of(config):
    bad = [i for i in getattr(part, "leave_out", ()) if not 0 <= i < layers]
    if bad:
      raise UserError("%s adapter config: leave_out names layer(s) %s; this "
                      "model's layers are 0..%d" % (
                          part.kind, clip_value(bad), layers - 1))


def is_combination(config):
  """Whether `config` combines several methods' configs (a union)."""
  return method_of(config).parts is not None


def adapterhub_layout(config):
  """The AdapterHubLayout of an adapter of `config` (its parts' together).

  Raises:
    UserError: naming the first part whose method AdapterHub's files do not
      hold.
  """
  layout = None
  for part in parts_of(config):
    method = method_of(part)
    if method.adapterhub is None:
      raise UserError("AdapterHub's files hold no %s adapters" % part.kind)
    layout = method.adapterhub if layout is None else (
        layout + method.adapterhub)
  return layout


def combine_strategy(config, name):
  """The averaging `name` of adapters of `config` (None for "linear").

  Raises:
    UserError: for a strategy of another method, or an unknown one.
  """
  if name == "linear":
    return None
  strategies = method_of(config).combine_strategies
  if name in strategies:
    return strategies[name]
  owners = sorted(k for k, m in METHODS.items()
                  if name in m.combine_strategies)
  if owners:
    raise UserError("combine_strategy %r is for %s adapters; this one is %s"
                    % (name, " and ".join(owners), config.kind))
  known = sorted({"linear"}.union(*(m.combine_strategies
                                    for m in METHODS.values())))
  raise UserError("unknown combine_strategy %r; expected one of %s"
                  % (name, ", ".join(known)))


def resize(config, size, bert_config):
  """`config` with a bottleneck of `size` (--adapter_size).

  Raises:
    UserError: for a method without a bottleneck size.
  """
  method = method_of(config)
  if method.resize is None:
    raise UserError("--adapter_size does not apply to a %s adapter; set its "
                    "fields in a JSON file" % config.kind)
  return method.resize(config, size, bert_config)
