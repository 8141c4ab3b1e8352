"""Adapter directories written by AdapterHub's `save_adapter`, loaded here.

An AdapterHub directory holds `adapter_config.json` ({"config": the
method's config, "hidden_size", "model_name", "model_type", "name", ...}),
`pytorch_adapter.bin` or `adapter.safetensors`, and with its head
`head_config.json` and `pytorch_model_head.bin` or `model_head.safetensors`.
The config loads as this toolkit's config of the same method (AdapterHub's
field names); each tensor is renamed to this model's checkpoint name
(torch's Linear weights [out, in] transposed) and every variable of the
adapter must be covered, with its shape, before anything is assigned.

Methods read: the bottleneck family (sequential and parallel, with their
LayerNorms, scaling, gates, Compacter's PHM layers and invertible
adapters), LoRA, (IA)^3, prefix tuning (its reparametrisation pool),
prompt tuning and their unions (mam, unipelt). Flat prefix tuning is
refused by name.
Heads: AdapterHub's classification heads (`layers`, `activation_function`,
`use_pooler`).
"""

import json
import os
import re

from absl import logging
import numpy as np

from adapter_bert import adapters as adapters_lib
from adapter_bert.adapters import registry
from adapter_bert.storage import torch_formats
from adapter_bert.errors import UserError
from adapter_bert.storage import atomic_io

CONFIG_FILE = "adapter_config.json"
FLAT = "<flat prefixes>"
WEIGHTS = ("adapter.safetensors", "pytorch_adapter.bin")
HEAD_CONFIG_FILE = "head_config.json"
HEAD_WEIGHTS = ("model_head.safetensors", "pytorch_model_head.bin")


def is_adapterhub_dir(directory):
  """Whether `directory` looks like AdapterHub's `save_adapter` output."""
  path = os.path.join(str(directory), CONFIG_FILE)
  if not (os.path.isfile(path)
          and torch_formats.exists_any(directory, WEIGHTS)):
    return False
  try:
    with open(path, encoding="utf-8") as f:
      return isinstance(json.load(f).get("config"), dict)
  except (OSError, ValueError, AttributeError):
    return False


def _read_json(path):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError("%s: cannot read: %s" % (path, e)) from None


def _our_name(ah_name, adapter):
  """This model's checkpoint name of an AdapterHub adapter tensor, and
  whether the value is transposed (a Linear weight); "skip" for a copy
  AdapterHub saves more than once; None for a name not read here."""
  a = re.escape(adapter)
  # Model-level: prefix tuning's pool, prompts, invertible adapters,
  # Compacter's shared PHM rule.
  if re.match(r"^bert\.prefix_tuning\.prefix_tunings\.%s\.self_prefix\."
              r"control_trans$" % a, ah_name):
    return FLAT, False  # Flat prefixes, [P * 2L * H]: split in load().
  m = re.match(r"^bert\.prefix_tuning\.prefix_tunings\.%s\.self_prefix\."
               r"(wte\.weight|control_trans\.(0|2)\.(weight|bias))$" % a,
               ah_name)
  if m:
    if m.group(1) == "wte.weight":
      return "bert/prefix_tuning/wte", False
    dense = "dense_%d" % (0 if m.group(2) == "0" else 1)
    return ("bert/prefix_tuning/control_trans/%s/%s" % (
        dense, "kernel" if m.group(3) == "weight" else "bias"),
            m.group(3) == "weight")
  if re.match(r"^bert\.encoder\.layer\.\d+\.attention\.self\."
              r"prefix_tuning\.pool\.", ah_name):
    return "skip"  # Each layer's copy of the one pool above.
  m = re.match(r"^bert\.prompt_tuning\.prompt_tunings\.%s\."
               r"prompt_embedding\.weight$" % a, ah_name)
  if m:
    return "bert/embeddings/prompt_tuning/prompt_embedding", False
  m = re.match(r"^bert\.invertible_adapters\.%s\.(F|G)\.(0|2)\."
               r"(weight|bias)$" % a, ah_name)
  if m:
    net, index, what = m.groups()
    part = {("0", "weight"): "weights1", ("0", "bias"): "biases1",
            ("2", "weight"): "weights2", ("2", "bias"): "biases2"}[
                (index, what)]
    return ("bert/embeddings/invertible_adapter/%s/%s" % (net, part),
            what == "weight")
  m = re.match(r"^bert\.shared_parameters\.%s\.(phm_rule|phm_rule_left|"
               r"phm_rule_right)$" % a, ah_name)
  if m:
    return "bert/adapters/" + m.group(1), False
  m = re.match(r"^(?:bert\.)?encoder\.layer\.(\d+)\.(.+)$", ah_name)
  if not m:
    return None
  layer, rest = m.groups()
  prefix = "bert/encoder/layer_%s/" % layer
  m = re.match(r"^(attention\.output|output)\.adapters\.%s\.(.+)$" % a,
               rest)
  if m:
    place = m.group(1).replace(".", "/")
    part = m.group(2)
    table = {"adapter_down.0.weight": ("weights1", True),
             "adapter_down.0.bias": ("biases1", False),
             "adapter_up.weight": ("weights2", True),
             "adapter_up.bias": ("biases2", False),
             "scaling": ("scaling", False),
             "adapter_norm_before.weight": ("ln_before/gamma", False),
             "adapter_norm_before.bias": ("ln_before/beta", False),
             "adapter_norm_after.weight": ("ln_after/gamma", False),
             "adapter_norm_after.bias": ("ln_after/beta", False),
             "gate.weight": ("gate/kernel", True),
             "gate.bias": ("gate/bias", False)}
    phm = re.match(r"^adapter_(down\.0|up)\.(W|W_left|W_right|b|phm_rule|"
                   r"phm_rule_left|phm_rule_right)$", part)
    if phm:  # Compacter's PHM layers: the same layout, no transpose.
      return prefix + place + "/adapters/%s/%s" % (
          "down" if phm.group(1) == "down.0" else "up", phm.group(2)), False
    if part not in table:
      return None
    name, transpose = table[part]
    return prefix + place + "/adapters/" + name, transpose
  m = re.match(r"^(attention\.self\.(?:query|key|value)|intermediate\.dense|"
               r"output\.dense)\.loras\.%s\.(lora_A|lora_B|gate\.weight|"
               r"gate\.bias)$" % a, rest)
  if m:
    scope = m.group(1).replace(".", "/")
    part = {"gate.weight": "lora_gate/kernel",
            "gate.bias": "lora_gate/bias"}.get(m.group(2), m.group(2))
    return prefix + scope + "/" + part, True
  m = re.match(r"^attention\.self\.prefix_tuning\.prefix_gates\.%s\."
               r"(weight|bias)$" % a, rest)
  if m:
    return (prefix + "attention/self/prefix_tuning/gate/" + (
        "kernel" if m.group(1) == "weight" else "bias"),
            m.group(1) == "weight")
  return None


def _flat_layers(parts, bert_config):
  """The blocks with prefixes of a config's (flat) prefix tuning, and P."""
  prefix = next(p for p in parts if p.kind == "prefix_tuning")
  kept = [i for i in range(bert_config.num_hidden_layers)
          if i not in prefix.leave_out]
  return kept, prefix.prefix_length


def _split_flat(value, parts, bert_config):
  """AdapterHub's flat control_trans [P * 2L * H] -> each block's keys and
  values [P, H] (the keys of the i-th block with prefixes at 2i, its values
  at 2i + 1, as its prefix MLP's output is viewed)."""
  kept, length = _flat_layers(parts, bert_config)
  h = bert_config.hidden_size
  if value.size != length * 2 * len(kept) * h:
    raise UserError("flat prefixes of %d values; a prefix length %d over %d "
                    "blocks of width %d needs %d" % (
                        value.size, length, len(kept), h,
                        length * 2 * len(kept) * h))
  grid = value.reshape(length, 2 * len(kept), h)
  out = {}
  for i, layer in enumerate(kept):
    scope = "bert/encoder/layer_%d/attention/self/prefix_tuning/" % layer
    out[scope + "keys"] = grid[:, 2 * i]
    out[scope + "values"] = grid[:, 2 * i + 1]
  return out


def _head_names(layers):
  """{AdapterHub head module index: (our name, transposed)} of a head."""
  out = {}
  for k in range(layers - 1):
    out[3 * k + 1] = ("classifier/dense_%d/kernel" % k, True)
  out[3 * (layers - 1) + 1] = ("output_weights", False)
  return out


def load(model, directory, load_as=None, with_head=True, set_active=False):
  """Loads an AdapterHub adapter directory into `model`.

  Returns:
    The adapter's name in the model.

  Raises:
    UserError: for another model type or hidden size, a method or head not
      read here, tensors that do not cover the adapter or do not fit it.
  """
  where = str(directory)
  record = _read_json(os.path.join(directory, CONFIG_FILE))
  if record.get("model_type", "bert") != "bert":
    raise UserError("%s: an AdapterHub adapter for model_type %r; this "
                    "model is a BERT" % (where, record.get("model_type")))
  hidden = record.get("hidden_size")
  if hidden is not None and int(hidden) != model.config.hidden_size:
    raise UserError("%s: the adapter was trained on %s (hidden size %s); "
                    "this base has hidden size %d" % (
                        where, record.get("model_name") or "another model",
                        hidden, model.config.hidden_size))
  known = getattr(model, "base_name", None)
  if record.get("model_name") and known and record["model_name"] != known:
    # A hub id and a directory's _name_or_path need not agree for the same
    # weights (the shared MiniLM's are nreimers/... and sentence-
    # transformers/...): sizes are checked, names only reported.
    logging.warning("%s was saved on %s; this base is %s", where,
                    record["model_name"], known)
  try:
    config = adapters_lib.config_from_dict(record["config"])
  except UserError as e:
    raise UserError("%s: %s" % (where, e)) from None
  kind = getattr(config, "kind", None)
  parts = registry.parts_of(config)
  for part in parts:
    if part.kind not in ("bn", "lora", "ia3", "prefix_tuning",
                         "prompt_tuning"):
      raise UserError("%s: AdapterHub %s adapters are not read here"
                      % (where, part.kind))
  name = load_as or record.get("name") or os.path.basename(
      os.path.normpath(where))
  ah_name = record.get("name") or name
  tensors = torch_formats.read_tensors(
      torch_formats.exists_any(directory, WEIGHTS))
  head_record = None
  head_path = os.path.join(directory, HEAD_CONFIG_FILE)
  if with_head and os.path.isfile(head_path):
    head_record = _read_json(head_path)
    head_config = head_record.get("config") or {}
    if head_config.get("head_type") not in ("classification", "tagging"):
      raise UserError("%s: AdapterHub %r heads are not read (classification "
                      "and tagging heads are)"
                      % (where, head_config.get("head_type")))
    if not head_config.get("bias", True):
      raise UserError("%s: a head without bias is not read" % where)
    if name in model.heads:
      raise UserError("a head named %r exists already; load the adapter "
                      "under another name (load_as=...)" % name)
  model.add_adapter(name, config)
  try:
    targets = {k: v for k, (v, tag) in model.adapter_view(
        name).checkpoint_variables().items() if tag.owner == name
               and tag.kind == "adapter"}
    ia3 = any(p.kind == "ia3" for p in parts)
    values = {}
    for key, value in tensors.items():
      mapped = _our_name(key, ah_name)
      if mapped == "skip":
        continue
      if mapped is None:
        raise UserError("%s: tensor %s has no place in a %s adapter here"
                        % (where, key, kind))
      ours, transpose = mapped
      if ours == FLAT:
        values.update(_split_flat(value, parts, model.config))
        continue
      if ia3 and ours.endswith("/lora_B") and value.shape[-1] == 1:
        value, transpose = value.reshape(-1), False  # [out, 1] -> [out].
      values[ours] = value.T if transpose else value
    _assign(targets, values, where)
    if head_record is not None:
      c = head_record["config"]
      if c["head_type"] == "tagging":
        model.add_tagging_head(
            name, int(c["num_labels"]), layers=int(c.get("layers", 1)),
            activation_function=c.get("activation_function", "tanh"))
      else:
        model.add_classification_head(
            name, int(c["num_labels"]), layers=int(c.get("layers", 2)),
            activation_function=c.get("activation_function", "tanh"),
            use_pooler=bool(c.get("use_pooler", False)))
      head_tensors = torch_formats.read_tensors(
          torch_formats.exists_any(directory, HEAD_WEIGHTS))
      table = _head_names(int(c.get("layers", 1 if c["head_type"] ==
                                    "tagging" else 2)))
      head_values = {}
      for key, value in head_tensors.items():
        m = re.match(r"^heads\.[^.]+\.(\d+)\.(weight|bias)$", key)
        if not m or int(m.group(1)) not in table:
          raise UserError("%s: head tensor %s has no place here"
                          % (where, key))
        ours, transpose = table[int(m.group(1))]
        if m.group(2) == "bias":
          ours = (ours[:-len("kernel")] + "bias" if ours.endswith("kernel")
                  else "output_bias")
          transpose = False
        head_values[ours] = value.T if transpose else value
      head = model.heads[name]
      _assign({k: v for k, v, _ in head.checkpoint_variables(None)},
              head_values, where)
  except BaseException:
    if name in model.heads:
      model.delete_head(name)
    model.delete_adapter(name)
    raise
  if set_active:
    model.set_active_adapters(name)
  return name


def _assign(targets, values, where):
  """Checks that `values` covers `targets` with their shapes, then assigns."""
  missing = sorted(set(targets) - set(values))
  extra = sorted(set(values) - set(targets))
  if missing or extra:
    raise UserError("%s does not fit this model's adapter: %s%s" % (
        where, ("missing " + ", ".join(missing[:3])) if missing else "",
        ("; not in the model " + ", ".join(extra[:3])) if extra else ""))
  for key, variable in targets.items():
    value = np.asarray(values[key], np.float32)
    shape = tuple(variable.shape)
    if value.shape != shape:
      if value.size == int(np.prod(shape)) and len(shape) == 2 and 1 in shape:
        value = value.reshape(shape)  # e.g. biases1 [m] -> [1, m].
      else:
        raise UserError("%s: %s is %s there, %s here"
                        % (where, key, list(value.shape), list(shape)))
    variable.assign(value)


# --- Writing AdapterHub's layout. ---------------------------------------------

VERSION = "adapters.1.3.0"  # The AdapterHub version whose layout this is.


def _ah_name(ours, adapter):
  """The inverse of _our_name: (AdapterHub name, transposed) of one of this
  model's adapter checkpoint names, or None."""
  m = re.match(r"^bert/prefix_tuning/(wte|control_trans/dense_(0|1)/"
               r"(kernel|bias))$", ours)
  if m:
    stem = "bert.prefix_tuning.prefix_tunings.%s.self_prefix." % adapter
    if m.group(1) == "wte":
      return stem + "wte.weight", False
    return (stem + "control_trans.%s.%s" % (
        "0" if m.group(2) == "0" else "2",
        "weight" if m.group(3) == "kernel" else "bias"),
            m.group(3) == "kernel")
  if ours == "bert/embeddings/prompt_tuning/prompt_embedding":
    return ("bert.prompt_tuning.prompt_tunings.%s.prompt_embedding.weight"
            % adapter), False
  m = re.match(r"^bert/embeddings/invertible_adapter/(F|G)/(weights|biases)"
               r"(1|2)$", ours)
  if m:
    net, what, index = m.groups()
    return ("bert.invertible_adapters.%s.%s.%s.%s" % (
        adapter, net, "0" if index == "1" else "2",
        "weight" if what == "weights" else "bias"), what == "weights")
  m = re.match(r"^bert/adapters/(phm_rule|phm_rule_left|phm_rule_right)$",
               ours)
  if m:
    return "bert.shared_parameters.%s.%s" % (adapter, m.group(1)), False
  m = re.match(r"^bert/encoder/layer_(\d+)/(.+)$", ours)
  if not m:
    return None
  layer, rest = m.groups()
  prefix = "bert.encoder.layer.%s." % layer
  m = re.match(r"^(attention/output|output)/adapters/(down|up)/(W|W_left|"
               r"W_right|b|phm_rule|phm_rule_left|phm_rule_right)$", rest)
  if m:
    return "%s%s.adapters.%s.adapter_%s.%s" % (
        prefix, m.group(1).replace("/", "."), adapter,
        "down.0" if m.group(2) == "down" else "up", m.group(3)), False
  m = re.match(r"^(attention/output|output)/adapters/(.+)$", rest)
  if m:
    table = {"weights1": ("adapter_down.0.weight", True),
             "biases1": ("adapter_down.0.bias", False),
             "weights2": ("adapter_up.weight", True),
             "biases2": ("adapter_up.bias", False),
             "scaling": ("scaling", False),
             "ln_before/gamma": ("adapter_norm_before.weight", False),
             "ln_before/beta": ("adapter_norm_before.bias", False),
             "ln_after/gamma": ("adapter_norm_after.weight", False),
             "ln_after/beta": ("adapter_norm_after.bias", False),
             "gate/kernel": ("gate.weight", True),
             "gate/bias": ("gate.bias", False)}
    if m.group(2) not in table:
      return None
    part, transpose = table[m.group(2)]
    return "%s%s.adapters.%s.%s" % (prefix, m.group(1).replace("/", "."),
                                    adapter, part), transpose
  m = re.match(r"^(attention/self/(?:query|key|value)|intermediate/dense|"
               r"output/dense)/(lora_A|lora_B|lora_gate/kernel|"
               r"lora_gate/bias)$", rest)
  if m:
    part = {"lora_gate/kernel": "gate.weight",
            "lora_gate/bias": "gate.bias"}.get(m.group(2), m.group(2))
    return "%s%s.loras.%s.%s" % (prefix, m.group(1).replace("/", "."),
                                 adapter, part), True
  m = re.match(r"^attention/self/prefix_tuning/gate/(kernel|bias)$", rest)
  if m:
    return ("%sattention.self.prefix_tuning.prefix_gates.%s.%s" % (
        prefix, adapter, "weight" if m.group(1) == "kernel" else "bias"),
            m.group(1) == "kernel")
  return None


def _adapterhub_config(config):
  """A config as AdapterHub's adapter_config.json "config" holds it."""
  if registry.is_combination(config):
    return {"architecture": type(config).architecture,
            "configs": [_adapterhub_config(c) for c in config.configs]}
  out = config.to_dict()
  if getattr(type(config), "architecture", None):
    out["architecture"] = type(config).architecture
  out.pop("kind", None)
  return out


def save(model, directory, name, with_head=True, model_name=None):
  """Writes adapter `name` of `model` in AdapterHub's layout (what its
  `load_adapter` reads): adapter_config.json, pytorch_adapter.bin and
  adapter.safetensors, and with its head head_config.json,
  pytorch_model_head.bin and model_head.safetensors; atomically.

  Raises:
    UserError: for a method or head AdapterHub's layout is not written for.
  """
  config = model.adapter_configs[name]
  kind = getattr(config, "kind", None)
  parts = registry.parts_of(config)
  for part in parts:
    if part.kind not in ("bn", "lora", "ia3", "prefix_tuning",
                         "prompt_tuning"):
      raise UserError("adapter %r (%s): AdapterHub's layout is written for "
                      "its methods (bottleneck, Compacter, invertible, LoRA, "
                      "(IA)^3, prefix and prompt tuning, unions), not %s"
                      % (name, kind, part.kind))
  ia3 = any(p.kind == "ia3" for p in parts)
  tensors, flat = {}, {}
  for key, (variable, tag) in model.adapter_view(
      name).checkpoint_variables().items():
    if tag.kind != "adapter" or tag.owner != name:
      continue
    if key.endswith(("/prefix_tuning/keys", "/prefix_tuning/values")):
      flat[key] = variable.numpy()  # Joined below, as AdapterHub's flat.
      continue
    mapped = _ah_name(key, name)
    if mapped is None:
      raise UserError("adapter %r: %s has no place in AdapterHub's layout"
                      % (name, key))
    ah, transpose = mapped
    value = variable.numpy()
    if len(value.shape) == 2 and value.shape[0] == 1 and key.endswith(
        ("biases1", "biases2")):
      value = value[0]
    if ia3 and key.endswith("/lora_B") and len(value.shape) == 1:
      value, transpose = value.reshape(-1, 1), False  # [out] -> [out, 1].
    tensors[ah] = value.T if transpose else value
  if flat:
    kept, length = _flat_layers(parts, model.config)
    grid = np.zeros((length, 2 * len(kept), model.config.hidden_size),
                    np.float32)
    for i, layer in enumerate(kept):
      scope = "bert/encoder/layer_%d/attention/self/prefix_tuning/" % layer
      grid[:, 2 * i] = flat[scope + "keys"]
      grid[:, 2 * i + 1] = flat[scope + "values"]
    tensors["bert.prefix_tuning.prefix_tunings.%s.self_prefix.control_trans"
            % name] = grid.reshape(-1)
  config_dict = _adapterhub_config(config)
  record = {"config": config_dict, "hidden_size": model.config.hidden_size,
            "model_class": "BertAdapterModel", "model_name": model_name,
            "model_type": "bert", "name": name, "version": VERSION}
  head = model.heads.get(name) if with_head else None
  with atomic_io.staged_directory(directory, "adapter directory") as tmp:
    _write(tmp, CONFIG_FILE, record, "pytorch_adapter.bin",
           "adapter.safetensors", tensors)
    if head is not None:
      head_tensors = {}
      for i, (kernel, bias) in enumerate(head.hidden):
        head_tensors["heads.%s.%d.weight" % (name, 3 * i + 1)] = (
            kernel.numpy().T)
        head_tensors["heads.%s.%d.bias" % (name, 3 * i + 1)] = bias.numpy()
      last = 3 * (head.layers - 1) + 1
      head_tensors["heads.%s.%d.weight" % (name, last)] = (
          head.output_weights.numpy())
      head_tensors["heads.%s.%d.bias" % (name, last)] = (
          head.output_bias.numpy())
      head_config = {"head_type": ("tagging" if head.per_token
                                   else "classification"),
                     "num_labels": head.num_labels, "layers": head.layers,
                     "activation_function": head.activation_function,
                     "bias": True, "dropout_prob": None,
                     "label2id": {"LABEL_%d" % i: i
                                  for i in range(head.num_labels)}}
      if not head.per_token:
        head_config["use_pooler"] = head.use_pooler
      head_record = dict(record, config=head_config)
      _write(tmp, HEAD_CONFIG_FILE, head_record, "pytorch_model_head.bin",
             "model_head.safetensors", head_tensors)
  return os.path.abspath(directory)


def _write(directory, config_file, record, bin_name, safe_name, tensors):
  """A JSON record and its tensors as .bin and safetensors, in directory."""
  atomic_io.atomic_write_text(os.path.join(directory, config_file),
                              json.dumps(record, indent=2, sort_keys=True)
                              + "\n")
  torch_formats.write_torch_bin(os.path.join(directory, bin_name), tensors)
  torch_formats.write_safetensors(os.path.join(directory, safe_name), tensors,
                                  {"format": "pt"})
  return directory


# --- AdapterFusion in AdapterHub's layout. -----------------------------------

FUSION_CONFIG_FILE = "adapter_fusion_config.json"
FUSION_WEIGHTS = ("model_adapter_fusion.safetensors",
                  "pytorch_model_adapter_fusion.bin")


def is_adapterhub_fusion_dir(directory):
  return (os.path.isfile(os.path.join(str(directory), FUSION_CONFIG_FILE))
          and torch_formats.exists_any(directory, FUSION_WEIGHTS) is not None)


def _fusion_pairs(fusion_name):
  """[(this model's name regex template, AdapterHub's)] of a fusion's
  variables, per place and part."""
  out = []
  for ours_place, ah_place in (("attention/output", "attention.output"),
                               ("output", "output")):
    for part in ("query", "key", "value"):
      for ours_leaf, ah_leaf, transpose in (("kernel", "weight", True),
                                            ("bias", "bias", False)):
        out.append(("bert/encoder/layer_{i}/%s/adapter_fusion/%s/%s"
                    % (ours_place, part, ours_leaf),
                    "bert.encoder.layer.{i}.%s.adapter_fusion_layer.%s.%s.%s"
                    % (ah_place, fusion_name, part, ah_leaf), transpose))
  return out


def load_fusion(model, directory, load_as=None, set_active=False):
  """Loads AdapterHub's save_adapter_fusion output; the fused adapters must
  be in the model already (as AdapterHub requires).

  Returns:
    The fusion's name in the model.
  """
  where = str(directory)
  record = _read_json(os.path.join(directory, FUSION_CONFIG_FILE))
  hidden = record.get("hidden_size")
  if hidden is not None and int(hidden) != model.config.hidden_size:
    raise UserError("%s: the fusion was trained on %s (hidden size %s); this "
                    "base has hidden size %d" % (
                        where, record.get("model_name") or "another model",
                        hidden, model.config.hidden_size))
  names = list(record.get("adapter_names") or [])
  ah_name = record.get("name") or ",".join(names)
  for n in names:
    if n not in model.adapter_configs:
      raise UserError("%s fuses adapter %r, which the model lacks: load it "
                      "first (load_adapter)" % (where, n))
  name = load_as or ah_name
  tensors = torch_formats.read_tensors(
      torch_formats.exists_any(directory, FUSION_WEIGHTS))
  model.add_adapter_fusion(names, config=dict(record.get("config") or {}),
                           name=name)
  try:
    targets = dict(model.fusion_variables(name))
    values = {}
    for key, value in tensors.items():
      found = None
      for ours, ah, transpose in _fusion_pairs(ah_name):
        m = re.match("^" + re.escape(ah).replace(r"\{i\}", r"(\d+)") + "$",
                     key)
        if m:
          found = ours.format(i=m.group(1)), transpose
          break
      if found is None:
        raise UserError("%s: tensor %s has no place in a fusion here"
                        % (where, key))
      values[found[0]] = value.T if found[1] else value
    _assign(targets, values, where)
  except BaseException:
    model.delete_adapter_fusion(name)
    raise
  if set_active:
    model.set_active_adapters(adapters_lib.composition.Fuse(*names,
                                                            name=name))
  return name


def save_fusion(model, directory, name, model_name=None):
  """Writes fusion `name` in AdapterHub's layout (what its
  load_adapter_fusion reads), atomically."""
  names, config = model.fusions[name]
  tensors = {}
  pairs = _fusion_pairs(name)
  for key, variable in model.fusion_variables(name).items():
    for ours, ah, transpose in pairs:
      m = re.match("^" + re.escape(ours).replace(r"\{i\}", r"(\d+)") + "$",
                   key)
      if m:
        value = variable.numpy()
        tensors[ah.format(i=m.group(1))] = value.T if transpose else value
        break
    else:
      raise UserError("fusion %r: %s has no place in AdapterHub's layout"
                      % (name, key))
  record = {"config": config.to_dict(), "adapter_names": list(names),
            "hidden_size": model.config.hidden_size,
            "model_class": "BertAdapterModel", "model_name": model_name,
            "model_type": "bert", "name": name, "version": VERSION}
  with atomic_io.staged_directory(directory, "fusion directory") as tmp:
    _write(tmp, FUSION_CONFIG_FILE, record,
           "pytorch_model_adapter_fusion.bin",
           "model_adapter_fusion.safetensors", tensors)
  return os.path.abspath(directory)
