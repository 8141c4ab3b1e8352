"""Adapters as small files: save, load, and the reference checkpoint layout.

An adapter directory (`output_dir/adapter/` after training) holds only what a
task trained on top of a frozen base model:

  adapter.ckpt.index, adapter.ckpt.data-*  a TF1-layout name-based checkpoint
      with the trained variables under their original names (adapters,
      LayerNorms and the classifier head `output_weights`/`output_bias`);
  adapter_config.json    the AdapterConfig the adapters were built with;
  adapter_metadata.json  the task (name, labels, regression or not),
      `max_seq_length`, `do_lower_case`, `train_mode`, the base model's BERT
      config and a fingerprint of the base weights the task was trained on.

The fingerprint is the SHA-256 over the names, dtypes, shapes and bytes of
every model variable the directory does not hold (the frozen base), in name
order. `load_adapter` recomputes it on the model it loads into, so an adapter
is never silently put on top of a base it was not trained with.

This module also writes and reads the layout of google-research/adapter-bert's
`run_classifier.py` checkpoints: the whole model by checkpoint name, Adam
slots `<name>/adam_m` and `<name>/adam_v` for the trained variables, and an
int64 `global_step`.
"""

import hashlib
import json
import os

from absl import logging
import numpy as np
import tensorflow as tf

from adapter_bert import adapters as adapters_lib
from adapter_bert.adapters import registry
from adapter_bert.storage import atomic_io
from adapter_bert.storage import checkpoint_io
from adapter_bert.storage.atomic_io import atomic_write_text
from adapter_bert.errors import UserError
from adapter_bert.adapters import fusion as fusion_lib

ADAPTER_CHECKPOINT = "adapter.ckpt"
ADAPTER_CONFIG_FILE = "adapter_config.json"
METADATA_FILE = "adapter_metadata.json"
# Bump when the directory's content or meaning changes.
FORMAT_VERSION = 1
FINGERPRINT_VERSION = b"adapter-bert base fingerprint v1\n"
GLOBAL_STEP = "global_step"
# Config fields that only matter before training (every other field changes
# the variables or the function computed).
_INIT_ONLY_FIELDS = {"init_weights", "init_weights_seed", "init_scale"}


# --- Fingerprint of the frozen base. ------------------------------------------


def _array_bytes(value):
  """(dtype string, shape, little-endian C-order bytes) of an array."""
  value = np.asarray(value)
  value = np.ascontiguousarray(value.astype(value.dtype.newbyteorder("<"),
                                            copy=False))
  return value.dtype.str, value.shape, value.tobytes()


def fingerprint_values(named_values):
  """SHA-256 over (name, dtype, shape, bytes) of each value, in name order.

  Args:
    named_values: iterable of (checkpoint name, callable returning a NumPy
      array); values are fetched one at a time.

  Returns:
    (hex digest, number of values hashed).
  """
  digest = hashlib.sha256(FINGERPRINT_VERSION)
  count = 0
  for name, fetch in sorted(named_values, key=lambda item: item[0]):
    dtype, shape, data = _array_bytes(fetch())
    header = "%s %s %s\n" % (name, dtype, ",".join(str(d) for d in shape))
    digest.update(header.encode("utf-8"))
    digest.update(data)
    count += 1
  return digest.hexdigest(), count


def base_fingerprint(model, exclude=()):
  """SHA-256 of the model's variables outside `exclude`, in name order.

  Args:
    model: a BertClassifier (or anything `checkpoint_io.checkpoint_name_map`
      accepts).
    exclude: checkpoint names left out (the variables an adapter holds).

  Returns:
    (hex digest, number of variables hashed).
  """
  excluded = set(exclude)
  return fingerprint_values(
      (name, variable.numpy)
      for name, variable in checkpoint_io.checkpoint_name_map(model).items()
      if name not in excluded)


def _short(fingerprint):
  return fingerprint[:16]


# --- Saving. ------------------------------------------------------------------


def adapter_names(model, trainable):
  """The checkpoint names an adapter directory holds for `trainable`.

  Those are the trained variables, plus the adapters and the head even when
  they were not trained (e.g. `--train_mode=head` with adapters: their
  random initial values are part of the task's model).

  Args:
    model: a BertClassifier.
    trainable: list of (checkpoint_name, variable) as returned by
      `modeling.set_train_mode`, or of checkpoint names.

  Returns:
    List of checkpoint names in the model's order.
  """
  trained = {item[0] if isinstance(item, (tuple, list)) else item
             for item in trainable}
  return [name for name, tag in checkpoint_io.checkpoint_tags(model).items()
          if name in trained or tag.kind in ("adapter", "head")]


def _field(obj, name, default=None):
  if obj is None:
    return default
  if isinstance(obj, dict):
    return obj.get(name, default)
  return getattr(obj, name, default)


def build_metadata(model, names, adapter_config, run_config, bert_config,
                   processor, init_checkpoint, adapter_name=None):
  """The content of adapter_metadata.json (a dict)."""
  fingerprint, count = base_fingerprint(model, exclude=names)
  name_map = checkpoint_io.checkpoint_name_map(model)
  is_regression = bool(_field(processor, "is_regression", False))
  label_list = processor.get_labels() if processor is not None else None
  return {
      "format_version": FORMAT_VERSION,
      "adapter_name": adapter_name,
      "task_name": _field(processor, "name", _field(run_config, "task_name")),
      "label_list": list(label_list) if label_list is not None else None,
      "is_regression": is_regression,
      "num_labels": (int(model.num_labels) if model.num_labels is not None
                     else None),
      # The head's structure where it is not the reference's one dense layer.
      "head_config": (model.head.head_config()
                      if getattr(model, "head", None) is not None
                      and hasattr(model.head, "head_config") else None),
      "max_seq_length": _field(run_config, "max_seq_length"),
      "do_lower_case": _field(run_config, "do_lower_case"),
      "train_mode": _field(run_config, "train_mode", "adapters"),
      "bert_config": bert_config.to_dict(),
      "adapter_config": adapter_config.to_dict(),
      "init_checkpoint": (os.path.abspath(init_checkpoint)
                          if init_checkpoint and "://" not in init_checkpoint
                          else init_checkpoint),
      "base_fingerprint": fingerprint,
      "base_fingerprint_variables": count,
      "variables": {n: list(name_map[n].shape) for n in names},
  }


def save_adapter(model, trainable, directory, adapter_config, run_config,
                 bert_config, processor, init_checkpoint=None,
                 adapter_name=None):
  """Writes the adapter directory of a trained model, atomically.

  The directory is built under a temporary name beside `directory`, then
  renamed into place; an existing directory is replaced only once the new
  one is complete.

  Args:
    model: the trained BertClassifier.
    trainable: list of (checkpoint_name, variable) that were trained.
    directory: destination, e.g. `output_dir/adapter`.
    adapter_config: the model's AdapterConfig.
    run_config: the RunConfig (or a dict / object with task_name,
      max_seq_length, do_lower_case, train_mode).
    bert_config: the base model's BertConfig.
    processor: the task's glue_processors.DataProcessor (name, labels).
    init_checkpoint: the base checkpoint the task started from (recorded).
    adapter_name: the adapter's name in the model (recorded; `load_adapter`
      of the model API loads it under that name unless told otherwise).

  Returns:
    The directory written, or None when every variable was trained
    (`--train_mode=full`: the model checkpoint itself is the result).
  """
  if len(adapter_names(model, trainable)) == len(
      checkpoint_io.checkpoint_name_map(model)):
    logging.info("Every variable was trained (train_mode=%s); no adapter "
                 "directory written, use the model checkpoint.",
                 _field(run_config, "train_mode"))
    return None
  # The adapter as served: e.g. prefix tuning's prefixes, not the MLP that
  # computed them while training (adapters.registry).
  view = model.view() if hasattr(model, "view") else model
  if hasattr(view, "serving_view"):
    model = view.serving_view()
    adapter_config = registry.serving_config(adapter_config)
  names = adapter_names(model, trainable)
  name_map = checkpoint_io.checkpoint_name_map(model)
  metadata = build_metadata(model, names, adapter_config, run_config,
                            bert_config, processor, init_checkpoint,
                            adapter_name)
  directory = os.path.abspath(directory)
  with atomic_io.staged_directory(directory, "adapter directory") as tmp:
    checkpoint_io.save_checkpoint(os.path.join(tmp, ADAPTER_CHECKPOINT),
                                  {n: name_map[n] for n in names})
    atomic_write_text(os.path.join(tmp, ADAPTER_CONFIG_FILE),
                      registry.config_to_json(adapter_config))
    atomic_write_text(os.path.join(tmp, METADATA_FILE),
                      json.dumps(metadata, indent=2, sort_keys=True) + "\n")
  size = directory_bytes(directory)
  logging.info("Wrote adapter directory %s: %d variables, %d bytes "
               "(base fingerprint %s)", directory, len(names), size,
               _short(metadata["base_fingerprint"]))
  return directory


def make_readable(directory):
  """Gives a directory built with mkdtemp/mkstemp the usual permissions.

  Temporary files and directories are private (0600/0700); the result
  gets what a plain mkdir / open would give under the current umask.
  """
  umask = os.umask(0)
  os.umask(umask)
  for root, dirs, files in os.walk(directory):
    os.chmod(root, 0o777 & ~umask)
    for name in dirs:
      os.chmod(os.path.join(root, name), 0o777 & ~umask)
    for name in files:
      os.chmod(os.path.join(root, name), 0o666 & ~umask)


def directory_bytes(directory):
  """Total size in bytes of the files directly in `directory`."""
  return sum(os.path.getsize(os.path.join(directory, f))
             for f in os.listdir(directory)
             if os.path.isfile(os.path.join(directory, f)))


# --- Loading. -----------------------------------------------------------------


def read_metadata(directory, flag_name="adapter_checkpoint"):
  """Reads and checks an adapter directory's files.

  Returns:
    (metadata dict, AdapterConfig, checkpoint prefix).

  Raises:
    UserError: if the directory is missing, incomplete or malformed.
  """
  where = "--%s=%s" % (flag_name, directory)
  if not os.path.isdir(directory):
    raise UserError("%s: directory not found" % where)
  path = os.path.join(directory, METADATA_FILE)
  if not os.path.isfile(path):
    raise UserError("%s is not an adapter directory (no %s)"
                    % (where, METADATA_FILE))
  try:
    with open(path, encoding="utf-8") as f:
      metadata = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError("%s: cannot read %s: %s"
                    % (where, METADATA_FILE, e)) from None
  if not isinstance(metadata, dict):
    raise UserError("%s: %s is not a JSON object" % (where, METADATA_FILE))
  version = metadata.get("format_version")
  if version != FORMAT_VERSION:
    raise UserError("%s: %s has format_version %r; this toolkit reads %d"
                    % (where, METADATA_FILE, version, FORMAT_VERSION))
  for key in ("bert_config", "base_fingerprint", "variables"):
    if key not in metadata:
      raise UserError("%s: %s lacks %r" % (where, METADATA_FILE, key))
  adapter_config = read_adapter_config(directory, flag_name)
  prefix = os.path.join(directory, ADAPTER_CHECKPOINT)
  if not os.path.exists(prefix + ".index"):
    raise UserError("%s: %s.index is missing" % (where, ADAPTER_CHECKPOINT))
  return metadata, adapter_config, prefix


def read_adapter_config(directory, flag_name="adapter_checkpoint"):
  """The adapter config stored in an adapter directory (any method)."""
  path = os.path.join(directory, ADAPTER_CONFIG_FILE)
  if not os.path.isfile(path):
    raise UserError("--%s=%s: %s is missing" % (flag_name, directory,
                                                 ADAPTER_CONFIG_FILE))
  try:
    return adapters_lib.config_from_json_file(path)
  except UserError as e:
    raise UserError("--%s=%s: %s" % (flag_name, directory, e)) from None


def _differences(mine, theirs, keys=None):
  keys = keys or sorted(set(mine) | set(theirs))
  return ["%s=%r there, %r here" % (k, theirs.get(k), mine.get(k))
          for k in keys if mine.get(k) != theirs.get(k)]


def check_base_config(bert_config, directory, metadata,
                      flag_name="adapter_checkpoint"):
  """Raises UserError unless the directory was trained on this BERT config."""
  diff = _differences(bert_config.to_dict(), metadata["bert_config"])
  if diff:
    raise UserError("--%s=%s was trained on a base model with another BERT "
                    "config (%s); check --bert_config_file"
                    % (flag_name, directory, "; ".join(diff)))


def _without_init_fields(value):
  """A config dict (unions' configs too) without what only matters before
  training."""
  if isinstance(value, dict):
    return {k: _without_init_fields(v) for k, v in value.items()
            if k not in _INIT_ONLY_FIELDS}
  if isinstance(value, list):
    return [_without_init_fields(v) for v in value]
  return value


def check_compatible(model, directory, metadata, adapter_config,
                     flag_name="adapter_checkpoint", skip_head=False):
  """Raises UserError unless `model` can hold this adapter directory's task."""
  where = "--%s=%s" % (flag_name, directory)
  check_base_config(model.config, directory, metadata, flag_name)
  if model.adapter_config.kind != adapter_config.kind:
    raise UserError("%s holds %s adapters, this model has %s adapters; check "
                    "--adapter_config" % (where, adapter_config.kind,
                                          model.adapter_config.kind))
  mine = _without_init_fields(model.adapter_config.to_dict())
  theirs = _without_init_fields(adapter_config.to_dict())
  keys = sorted(set(mine) | set(theirs))
  diff = _differences(mine, theirs, keys)
  if diff:
    raise UserError("%s holds adapters of another configuration (%s); check "
                    "--adapter_size and --adapter_config"
                    % (where, "; ".join(diff)))
  if skip_head or metadata.get("num_labels") is None:
    return
  if model.num_labels is None or int(metadata["num_labels"]) != int(
      model.num_labels):
    raise UserError("%s has a head with %s outputs (task %s) but the model "
                    "has %d; check --task_name"
                    % (where, metadata["num_labels"], metadata.get("task_name"),
                       model.num_labels))


def load_adapter(model, directory, init_checkpoint=None,
                 flag_name="adapter_checkpoint", label_list=None,
                 skip_head=False):
  """Loads an adapter directory on top of the model's current base weights.

  Args:
    model: a BertClassifier whose base is loaded (from --init_checkpoint),
      built with the directory's BERT and adapter configs.
    directory: the adapter directory.
    init_checkpoint: the base checkpoint used (only named in errors).
    flag_name: the flag to name in errors.
    label_list: optional labels of the task being run; must match the
      adapter's.
    skip_head: leave the directory's head out (the model has none there).

  Returns:
    The metadata dict of the directory.

  Raises:
    UserError: when the directory is malformed, was trained with another BERT
      or adapter config, another label set, or on another base model
      (fingerprint mismatch). Nothing is assigned then.
  """
  metadata, adapter_config, prefix = read_metadata(directory, flag_name)
  check_compatible(model, directory, metadata, adapter_config, flag_name,
                   skip_head)
  where = "--%s=%s" % (flag_name, directory)
  if (label_list is not None and metadata.get("label_list") is not None
      and list(label_list) != list(metadata["label_list"])):
    raise UserError("%s was trained for labels %s (task %s), not %s"
                    % (where, metadata["label_list"], metadata.get("task_name"),
                       list(label_list)))
  _, reader = checkpoint_io.read_checkpoint(prefix, flag_name)
  names = sorted(reader.get_variable_to_shape_map())
  if skip_head:
    names = [n for n in names if not checkpoint_io.is_head_name(n)]
  name_map = checkpoint_io.checkpoint_name_map(model)
  unknown = [n for n in names if n not in name_map]
  if unknown:
    raise UserError("%s holds %d variable(s) the model does not have, e.g. %s"
                    % (where, len(unknown), ", ".join(unknown[:3])))
  fingerprint, _ = base_fingerprint(model, exclude=names)
  expected = metadata["base_fingerprint"]
  if fingerprint != expected:
    hint = ""
    if metadata.get("init_checkpoint"):
      hint = ("; it was trained from --init_checkpoint=%s"
              % metadata["init_checkpoint"])
    if init_checkpoint:
      hint += " and this base is --init_checkpoint=%s" % init_checkpoint
    raise UserError("%s was trained on another base model (fingerprint %s, "
                    "this base %s)%s" % (where, _short(expected),
                                         _short(fingerprint), hint))
  restored, fresh = checkpoint_io.load_checkpoint(
      model, prefix, flag_name=flag_name, require_base=False, names=names)
  if fresh or len(restored) != len(names):
    raise UserError("%s: could not restore %s" % (where, ", ".join(fresh)))
  logging.info("Loaded adapter %s (task %s, %d variables) on base %s",
               directory, metadata.get("task_name"), len(restored),
               _short(fingerprint))
  return metadata


# --- The reference toolkit's checkpoint layout. -------------------------------


def reference_slot_names(name):
  """The Adam slot names of a variable in the reference layout."""
  return [name + suffix for suffix in checkpoint_io.SLOT_SUFFIXES]


def export_reference_checkpoint(model, prefix, global_step=0,
                                train_mode="adapters", adam_slots=True,
                                slot_values=None, write_state=True):
  """Writes the model as google-research/adapter-bert's run_classifier does.

  Every model variable under its checkpoint name, `global_step` (int64) and,
  for the variables trained in `train_mode`, the Adam slots
  `<name>/adam_m` and `<name>/adam_v`.

  Args:
    model: a BertClassifier.
    prefix: checkpoint prefix, e.g. `dir/model.ckpt-1000`.
    global_step: value of `global_step`.
    train_mode: which variables get slots (adapters, full or head).
    adam_slots: write the slots (zeros unless given in `slot_values`).
    slot_values: optional {slot name: value} (e.g. the Trainer's optimizer
      `slot_variables()`), used instead of zeros.
    write_state: also write the `checkpoint` state file in the prefix's
      directory so that the directory itself can be given as a checkpoint.

  Returns:
    The prefix written.
  """
  tensors = dict(checkpoint_io.checkpoint_name_map(model))
  if adam_slots:
    slot_values = slot_values or {}
    view = model if hasattr(model, "trainable_names") else model.view()
    trained = set(view.trainable_names(train_mode))
    for name, variable in list(tensors.items()):
      if name not in trained:
        continue
      for slot in reference_slot_names(name):
        value = slot_values.get(slot)
        tensors[slot] = (value if value is not None else
                         tf.zeros(variable.shape, variable.dtype))
  tensors[GLOBAL_STEP] = tf.constant(int(global_step), tf.int64)
  checkpoint_io.save_checkpoint(prefix, tensors)
  if write_state:
    directory = os.path.dirname(os.path.abspath(prefix))
    checkpoint_io.write_checkpoint_state(directory, os.path.abspath(prefix),
                                         [os.path.abspath(prefix)])
  return prefix


def import_reference_checkpoint(model, path, flag_name="init_checkpoint"):
  """Loads a reference-layout checkpoint into every variable of the model.

  Unlike `checkpoint_io.load_checkpoint`, every model variable (adapters and
  head included) must be in the checkpoint.

  Returns:
    dict: `global_step` (int or None), `restored` (names), `slots` (number of
    Adam slot entries), `ignored` (other checkpoint entries the model does
    not use).

  Raises:
    UserError: if a model variable is missing or has another shape.
  """
  prefix, reader = checkpoint_io.read_checkpoint(path, flag_name)
  shapes = reader.get_variable_to_shape_map()
  name_map = checkpoint_io.checkpoint_name_map(model)
  missing = [n for n in name_map if n not in shapes]
  if missing:
    raise UserError("--%s=%s lacks %d model variable(s), e.g. %s (were the "
                    "adapter size and task the same?)"
                    % (flag_name, prefix, len(missing), ", ".join(missing[:3])))
  restored, _ = checkpoint_io.load_checkpoint(model, prefix,
                                              flag_name=flag_name)
  slots = [n for n in shapes if n.endswith(checkpoint_io.SLOT_SUFFIXES)]
  ignored = sorted(n for n in shapes if n not in name_map and n not in slots
                   and n != GLOBAL_STEP)
  step = int(reader.get_tensor(GLOBAL_STEP)) if GLOBAL_STEP in shapes else None
  return {"global_step": step, "restored": restored, "slots": len(slots),
          "ignored": ignored}


def infer_adapter_config(path, flag_name="checkpoint", activation="gelu"):
  """An AdapterConfig matching the adapter variables found in a checkpoint.

  Args:
    path: checkpoint prefix or directory (any layout with the original
      names).
    flag_name: the flag to name in errors.
    activation: the adapters' activation (not recorded in checkpoints).

  Returns:
    (AdapterConfig, num_labels or None).
  """
  _, reader = checkpoint_io.read_checkpoint(path, flag_name)
  shapes = reader.get_variable_to_shape_map()
  size = 0
  locations = []
  for location in adapters_lib.LOCATIONS:
    scope = adapters_lib.HOOK_SCOPES[location]
    name = "bert/encoder/layer_0/%s/adapters/weights1" % scope
    if name in shapes:
      locations.append(location)
      size = int(shapes[name][-1])
  num_labels = None
  if "output_bias" in shapes:
    num_labels = int(shapes["output_bias"][0])
  if not locations:
    return adapters_lib.AdapterConfig(size=0), num_labels
  return (adapters_lib.AdapterConfig(size=size, activation=activation,
                                     locations=tuple(locations)), num_labels)


# --- AdapterFusion directories. -----------------------------------------------

FUSION_CHECKPOINT = "adapter_fusion.ckpt"
FUSION_CONFIG_FILE = "adapter_fusion_config.json"


HEADS = "heads/"  # Heads' variables in a fusion checkpoint: heads/<name>/.


def _fusion_head_variables(model, head):
  """{checkpoint name: variable} of head `head` in a fusion checkpoint."""
  return {HEADS + head + "/" + key: variable for key, variable, _ in
          model.heads[head].checkpoint_variables(None)}


def save_fusion(model, directory, name, adapter_names, config, variables,
                head=None):
  """Writes a fusion directory atomically: the fusion's weights under their
  checkpoint names, and adapter_fusion_config.json (the config, the fused
  adapters in order, the fusion's name, the base's BERT config and
  fingerprint); with `head` (a head name), that head too, its variables
  under `heads/<name>/`."""
  variables = dict(variables)
  head_record = None
  if head is not None:
    layer = model.heads[head]
    variables.update(_fusion_head_variables(model, head))
    head_record = {"name": head, "num_labels": int(layer.num_labels),
                   "config": layer.head_config()}
  record = {
      "format_version": FORMAT_VERSION,
      "name": name,
      "adapter_names": list(adapter_names),
      "config": config.to_dict(),
      "bert_config": model.config.to_dict(),
      "base_fingerprint": _base_only_fingerprint(model),
      "variables": sorted(variables),
  }
  if head_record is not None:
    record["head"] = head_record
  with atomic_io.staged_directory(directory, "fusion directory") as tmp:
    checkpoint_io.save_checkpoint(os.path.join(tmp, FUSION_CHECKPOINT),
                                  dict(variables))
    atomic_write_text(os.path.join(tmp, FUSION_CONFIG_FILE),
                      json.dumps(record, indent=2, sort_keys=True) + "\n")
  directory = os.path.abspath(directory)
  logging.info("Wrote fusion directory %s: %d variables, %d bytes",
               directory, len(variables), directory_bytes(directory))
  return directory


def _base_only_fingerprint(model):
  """The fingerprint of the base alone (no adapter, LayerNorm copy or head)."""
  view = model.view(adapters_lib.composition.Branch())
  return fingerprint_values(
      (name, variable.numpy)
      for name, variable in view.checkpoint_name_map().items())[0]


def load_fusion(model, directory, load_as=None, set_active=False,
                with_head=True):
  """Loads a directory of `save_fusion` into `model` (see the model API's
  `load_adapter_fusion`); with `with_head`, the head saved with it (under
  its name, made the active head)."""
  where = directory
  path = os.path.join(directory, FUSION_CONFIG_FILE)
  if not os.path.isdir(directory):
    raise UserError("%s: directory not found" % where)
  if not os.path.isfile(path):
    raise UserError("%s is not a fusion directory (no %s)"
                    % (where, FUSION_CONFIG_FILE))
  try:
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
    names = [str(n) for n in record["adapter_names"]]
    config = fusion_lib.AdapterFusionConfig.from_dict(record["config"])
    fusion_name = str(record["name"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError("%s: cannot read %s: %s" % (where, FUSION_CONFIG_FILE,
                                                e)) from None
  if record.get("format_version") != FORMAT_VERSION:
    raise UserError("%s: %s has format_version %r; this toolkit reads %d"
                    % (where, FUSION_CONFIG_FILE,
                       record.get("format_version"), FORMAT_VERSION))
  if record.get("bert_config") != model.config.to_dict():
    diffs = _differences(model.config.to_dict(),
                         record.get("bert_config") or {})
    raise UserError("%s: the fusion was trained on another base (%s)"
                    % (where, "; ".join(diffs[:3])))
  for n in names:
    if n not in model.adapter_configs:
      sub = os.path.join(directory, n)
      if not os.path.isdir(sub):
        raise UserError("%s: fuses adapter %r, which the model lacks and "
                        "the directory does not hold (%s)" % (where, n, sub))
      model.load_adapter(sub)
  fingerprint = _base_only_fingerprint(model)
  if record.get("base_fingerprint") != fingerprint:
    raise UserError("%s: the fusion was trained on another base (its "
                    "weights' fingerprint %s, this model's %s)"
                    % (where, _short(record.get("base_fingerprint", "")),
                       _short(fingerprint)))
  name = load_as or fusion_name
  head = record.get("head") if with_head else None
  if head is not None and head.get("name") in model.heads:
    raise UserError("%s: the fusion's head %r exists in the model already; "
                    "delete it or load with with_head=False"
                    % (where, head.get("name")))
  prefix, reader = checkpoint_io.read_checkpoint(
      os.path.join(directory, FUSION_CHECKPOINT), flag_name="fusion")
  model.add_adapter_fusion(names, config=config, name=name)
  try:
    variables = model.fusion_variables(name)
    if head is not None:
      _add_saved_head(model, head, where)
      variables.update(_fusion_head_variables(model, head["name"]))
    stored = [k for k in reader.get_variable_to_shape_map()
              if head is not None or not k.startswith(HEADS)]
    if sorted(stored) != sorted(variables):
      missing = sorted(set(variables) - set(stored))
      extra = sorted(set(stored) - set(variables))
      raise UserError("%s: the fusion's variables do not fit this model "
                      "(missing %s; not in the model %s)" % (
                          where, ", ".join(missing[:3]) or "none",
                          ", ".join(extra[:3]) or "none"))
    for key, variable in variables.items():
      value = checkpoint_io.read_tensor(reader, prefix, key, variable.dtype,
                                        flag_name="fusion")
      if tuple(value.shape) != tuple(variable.shape):
        raise UserError("%s: %s is %s there, %s here" % (
            where, key, value.shape, tuple(variable.shape)))
      variable.assign(value)
  except BaseException:
    model.delete_adapter_fusion(name)
    if head is not None and head.get("name") in model.heads:
      model.delete_head(head["name"])
    raise
  if head is not None:
    model.active_head = head["name"]
  if set_active:
    model.set_active_adapters(adapters_lib.composition.Fuse(*names,
                                                            name=name))
  return name


def _add_saved_head(model, head, where):
  """Adds the head a fusion directory records (name, num_labels, config)."""
  try:
    name, num_labels = str(head["name"]), int(head["num_labels"])
    config = dict(head.get("config") or {})
  except (KeyError, TypeError, ValueError) as e:
    raise UserError("%s: %s records a head it cannot describe (%s)"
                    % (where, FUSION_CONFIG_FILE, e)) from None
  model.add_head_from_config(name, num_labels, config)

