"""Adapter directories written by AdapterHub's `save_adapter`, loaded here.

An AdapterHub directory holds `adapter_config.json` ({"config": the
method's config, "hidden_size", "model_name", "model_type", "name", ...}),
`pytorch_adapter.bin` or `adapter.safetensors`, and with its head
`head_config.json` and `pytorch_model_head.bin` or `model_head.safetensors`.
The config loads as this toolkit's config of the same method (AdapterHub's
field names); each tensor is renamed to this model's checkpoint name by
the method's own AdapterHubLayout (adapters.hub_layout: names, transposes,
reshapes), and every variable of the adapter must be covered, with its
shape, before anything is assigned. A method whose registration has no
layout is refused by name.
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
from adapter_bert.errors import clip_value
from adapter_bert.storage import atomic_io

CONFIG_FILE = "adapter_config.json"
WEIGHTS = ("adapter.safetensors", "pytorch_adapter.bin")
HEAD_CONFIG_FILE = "head_config.json"
HEAD_WEIGHTS = ("model_head.safetensors", "pytorch_model_head.bin")


def is_adapterhub_dir(directory):
  """Whether `directory` looks like AdapterHub's `save_adapter` output (its
  adapter_config.json; a missing weights file is then load's error)."""
  path = os.path.join(str(directory), CONFIG_FILE)
  if not os.path.isfile(path):
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


def _tensors_to_ours(tensors, layout, config, bert_config, adapter, where):
  """{our checkpoint name: value} of an AdapterHub adapter's tensors.

  Raises:
    UserError: naming a tensor the layout has no place for.
  """
  values = {}
  for key, value in tensors.items():
    # A base model's adapter (AdapterHub's BertModel) names its tensors
    # without the "bert." that a model with heads puts in front.
    key = key if key.startswith("bert.") else "bert." + key
    if layout.skips(key, adapter):
      continue
    group = layout.group_for_theirs(key, adapter)
    if group is not None:
      try:
        values.update(group.split(value, config, bert_config))
      except UserError as e:
        raise UserError("%s: %s: %s" % (where, key, e)) from None
      continue
    found = layout.tensor_for_theirs(key, adapter)
    if found is None:
      raise UserError("%s: tensor %s has no place in a %s adapter here"
                      % (where, key, config.kind))
    ours, tensor = found
    values[ours] = tensor.value_to_ours(value)
  return values


def _head_names(layers):
  """{AdapterHub head module index: (our name, transposed)} of a head."""
  out = {}
  for k in range(layers - 1):
    out[3 * k + 1] = ("classifier/dense_%d/kernel" % k, True)
  out[3 * (layers - 1) + 1] = ("output_weights", False)
  return out


def _weights_file(directory, names, what):
  """The path of the first of `names` in `directory`.

  Raises:
    UserError: when there is none.
  """
  path = torch_formats.exists_any(directory, names)
  if path is None:
    raise UserError("%s: no %s weights (expected %s)"
                    % (directory, what, " or ".join(names)))
  return path


def _read_head_config(directory):
  """The fields of an AdapterHub head_config.json read here, checked.

  Returns:
    {"head_type", "num_labels", "layers", "activation_function",
     "use_pooler"}, with AdapterHub's defaults filled in.

  Raises:
    UserError: for a head type or field this toolkit does not read.
  """
  path = os.path.join(directory, HEAD_CONFIG_FILE)
  record = _read_json(path)
  config = record.get("config") if isinstance(record, dict) else None
  if not isinstance(config, dict):
    raise UserError("%s: no \"config\" object" % path)
  head_type = config.get("head_type")
  if head_type not in ("classification", "tagging"):
    raise UserError("%s: AdapterHub %s heads are not read (classification "
                    "and tagging heads are)" % (path, clip_value(head_type)))
  if config.get("bias", True) is not True:
    raise UserError("%s: a head without bias is not read" % path)
  out = {"head_type": head_type,
         "num_labels": config.get("num_labels"),
         "layers": config.get("layers", 1 if head_type == "tagging" else 2),
         "activation_function": config.get("activation_function", "tanh"),
         "use_pooler": config.get("use_pooler", False)}
  def positive(v):
    return isinstance(v, int) and v >= 1

  for field, ok, wanted in (
      ("num_labels", positive, "an integer >= 1"),
      ("layers", positive, "an integer >= 1"),
      ("activation_function", lambda v: isinstance(v, str), "a string"),
      ("use_pooler", lambda v: isinstance(v, bool), "true or false")):
    value = out[field]
    if isinstance(value, bool) and field != "use_pooler" or not ok(value):
      raise UserError("%s: %s=%s is not %s"
                      % (path, field, clip_value(value), wanted))
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
  if not isinstance(record, dict) or not isinstance(record.get("config"),
                                                    dict):
    raise UserError("%s: %s has no \"config\" object"
                    % (where, CONFIG_FILE))
  if record.get("model_type", "bert") != "bert":
    raise UserError("%s: an AdapterHub adapter for model_type %s; this "
                    "model is a BERT" % (where,
                                         clip_value(record.get("model_type"))))
  hidden = record.get("hidden_size")
  if hidden is not None and (isinstance(hidden, bool)
                             or not isinstance(hidden, int)):
    raise UserError("%s: %s: hidden_size=%s is not an integer"
                    % (where, CONFIG_FILE, clip_value(hidden)))
  if hidden is not None and hidden != model.config.hidden_size:
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
  try:
    layout = registry.adapterhub_layout(config)
  except UserError as e:
    raise UserError("%s: %s" % (where, e)) from None
  name = load_as or record.get("name") or os.path.basename(
      os.path.normpath(where))
  ah_name = record.get("name") or name
  tensors = torch_formats.read_tensors(
      _weights_file(directory, WEIGHTS, "adapter"))
  head_record = head_tensors = None
  if with_head and os.path.isfile(os.path.join(directory, HEAD_CONFIG_FILE)):
    head_record = _read_head_config(directory)
    if name in model.heads:
      raise UserError("a head named %r exists already; load the adapter "
                      "under another name (load_as=...)" % name)
    head_tensors = torch_formats.read_tensors(
        _weights_file(directory, HEAD_WEIGHTS, "head"))
  model.add_adapter(name, config)
  try:
    targets = {k: v for k, (v, tag) in model.adapter_view(
        name).checkpoint_variables().items() if tag.owner == name
               and tag.kind == "adapter"}
    values = _tensors_to_ours(tensors, layout, config, model.config, ah_name,
                              where)
    _assign(targets, values, where)
    if head_record is not None:
      c = head_record
      if c["head_type"] == "tagging":
        model.add_tagging_head(
            name, c["num_labels"], layers=c["layers"],
            activation_function=c["activation_function"])
      else:
        model.add_classification_head(
            name, c["num_labels"], layers=c["layers"],
            activation_function=c["activation_function"],
            use_pooler=c["use_pooler"])
      table = _head_names(c["layers"])
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


def _tensors_to_theirs(values, layout, config, bert_config, adapter):
  """{AdapterHub name: value} of an adapter's {our name: value}.

  Raises:
    UserError: naming a variable the layout has no place for.
  """
  tensors, grouped = {}, {}
  for key, value in values.items():
    group = layout.group_for_ours(key)
    if group is not None:
      grouped.setdefault(group, {})[key] = value
      continue
    found = layout.tensor_for_ours(key, adapter)
    if found is None:
      raise UserError("adapter %r: %s has no place in AdapterHub's layout"
                      % (adapter, key))
    theirs, tensor = found
    tensors[theirs] = tensor.value_to_theirs(value)
  for group, members in grouped.items():
    tensors[group.theirs.format(adapter=adapter)] = group.join(
        members, config, bert_config)
  return tensors


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
  try:
    layout = registry.adapterhub_layout(config)
  except UserError as e:
    raise UserError("adapter %r (%s): %s" % (name, config.kind, e)) from None
  values = {key: variable.numpy() for key, (variable, tag) in
            model.adapter_view(name).checkpoint_variables().items()
            if tag.kind == "adapter" and tag.owner == name}
  tensors = _tensors_to_theirs(values, layout, config, model.config, name)
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
