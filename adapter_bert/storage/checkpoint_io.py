"""The one map between model variables and original checkpoint names.

Google's BERT checkpoints are TF1 name-based checkpoints; their variable names
(`bert/encoder/layer_0/attention/self/query/kernel`, ...) are the interface.
`checkpoint_name_map` is the single place that defines them, and both
`load_checkpoint` and `save_checkpoint` go through it, so a model saved here
loads in the reference toolkit and the other way round.
"""

import collections
import os
import re
import shutil
import uuid

from absl import logging
import numpy as np
import tensorflow as tf

from adapter_bert.storage import atomic_io
from adapter_bert.storage.atomic_io import atomic_write_text
from adapter_bert.errors import UserError
from adapter_bert.storage import huggingface

HEAD_NAMES = ("output_weights", "output_bias")
# A head's hidden layers (AdapterHub-style heads, layers > 1).
HEAD_PREFIX = "classifier/"


def is_head_name(name):
  """Whether a checkpoint name is a classification head's variable."""
  return name in HEAD_NAMES or name.startswith(HEAD_PREFIX)
SLOT_SUFFIXES = ("/adam_m", "/adam_v")
# Hidden folders that save_checkpoint writes in: ".ckpt-tmp-<pid>-<random>".
TMP_DIR_PREFIX = "ckpt-tmp-"


def checkpoint_name_map(model):
  """Maps every variable of a model's view to its original checkpoint name.

  The layers declare the names (`modeling.ModelView.checkpoint_variables`
  composes them); this is the one map that loading and saving go through.

  Args:
    model: a modeling.BertAdapterModel (its active adapter and head) or a
      modeling.ModelView.

  Returns:
    OrderedDict {checkpoint name: variable}, in the original's order.
  """
  return model.checkpoint_name_map()


def checkpoint_tags(model):
  """{checkpoint name: modeling.Tag} of a model's active view (or a view)."""
  view = model.view() if hasattr(model, "view") else model
  return collections.OrderedDict(
      (name, tag) for name, (_, tag) in view.checkpoint_variables().items())


def base_names(model):
  """The checkpoint names every BERT checkpoint holds (base and LayerNorms),
  in the view's order."""
  return [n for n, tag in checkpoint_tags(model).items() if is_base_tag(tag)]


def base_tensors(model):
  """{name: variable} of what a Google BERT checkpoint holds of a model."""
  name_map = checkpoint_name_map(model)
  return collections.OrderedDict((n, name_map[n]) for n in base_names(model))


def is_base_tag(tag):
  """True for variables every BERT checkpoint holds (not adapter or head)."""
  return tag.kind in ("base", "layer_norm")


def resolve_checkpoint_path(path, flag_name="init_checkpoint"):
  """Accepts a checkpoint prefix or a directory holding checkpoints.

  Returns:
    The checkpoint prefix (the path without `.index`).

  Raises:
    UserError: if nothing loadable is there.
  """
  if path.endswith(".index"):
    path = path[:-len(".index")]
  if os.path.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      candidates = sorted(f[:-len(".index")] for f in os.listdir(path)
                          if f.endswith(".index"))
      if len(candidates) == 1:
        latest = os.path.join(path, candidates[0])
    if latest is None:
      raise UserError("--%s=%s: directory holds no checkpoint (*.index)"
                      % (flag_name, path))
    return latest
  if not os.path.exists(path + ".index"):
    raise UserError("--%s=%s: no checkpoint there (%s.index does not exist)"
                    % (flag_name, path, path))
  return path


def read_checkpoint(path, flag_name="init_checkpoint"):
  """Opens a TF1/TF2 name-based checkpoint, or a Hugging Face BERT directory
  (its tensors under the TF1 names, storage.huggingface).

  Returns:
    (prefix, tf.train.CheckpointReader)

  Raises:
    UserError: naming the flag and the file, if it cannot be opened (a
      missing, truncated or garbage index).
  """
  if huggingface.is_hf_dir(path):  # config.json + model.safetensors / .bin
    try:
      return path, huggingface.Reader(path)
    except UserError as e:
      raise UserError("--%s=%s: %s" % (flag_name, path, e)) from None
  prefix = resolve_checkpoint_path(path, flag_name)
  try:
    return prefix, tf.train.load_checkpoint(prefix)
  except Exception as e:  # pylint: disable=broad-except
    message = getattr(e, "message", None) or str(e) or type(e).__name__
    raise UserError("--%s=%s: cannot read checkpoint %s.index: %s"
                    % (flag_name, prefix, prefix,
                       message.splitlines()[0])) from None


def read_tensor(reader, prefix, name, dtype=None, flag_name="init_checkpoint"):
  """One tensor of an open checkpoint, as a NumPy array of `dtype`.

  Raises:
    UserError: naming the flag, the data file and the tensor, when its bytes
      cannot be read (a truncated or damaged data file) or its type does not
      fit `dtype` (a string or integer tensor where the model has floats).
  """
  where = "--%s=%s" % (flag_name, prefix)
  if dtype is not None:
    stored = reader.get_variable_to_dtype_map().get(name)
    wanted = tf.as_dtype(dtype)
    if stored is not None and stored != wanted and not (
        stored.is_floating and wanted.is_floating):
      raise UserError("%s: tensor %s is %s in the checkpoint but the model "
                      "expects %s" % (where, name, stored.name, wanted.name))
  try:
    value = reader.get_tensor(name)
  except Exception as e:  # pylint: disable=broad-except
    # A truncated data file raises IndexError ("Read less bytes than
    # requested"); damaged bytes an OpError.
    message = getattr(e, "message", None) or str(e) or type(e).__name__
    raise UserError("%s: tensor %s cannot be read from %s (truncated or "
                    "damaged?): %s" % (where, name, _data_files(prefix),
                                       message.splitlines()[0])) from None
  if dtype is not None:
    value = np.asarray(value).astype(np.dtype(tf.as_dtype(dtype).as_numpy_dtype))
  return value


def _data_files(prefix):
  files = sorted(tf.io.gfile.glob(prefix + ".data-*")) if "://" not in prefix \
      else []
  return ", ".join(files) or prefix + ".data-*"


def read_values(model, path, flag_name="init_checkpoint", require_base=True,
                names=None):
  """Reads (and checks) what `load_checkpoint` would restore, assigning nothing.

  Returns:
    (prefix, [(name, variable, value)], fresh names).

  Raises:
    UserError: see load_checkpoint.
  """
  prefix, reader = read_checkpoint(path, flag_name)
  shapes = reader.get_variable_to_shape_map()
  name_map = checkpoint_name_map(model)
  tags = checkpoint_tags(model)
  if names is not None:
    wanted = set(names)
    name_map = collections.OrderedDict(
        (k, v) for k, v in name_map.items() if k in wanted)
  # Check everything first so that an error never leaves a partial load.
  to_restore, fresh, missing_base = [], [], []
  for name, variable in name_map.items():
    if name not in shapes:
      (missing_base if require_base and is_base_tag(tags[name])
       else fresh).append(name)
      continue
    expected = list(variable.shape)
    if list(shapes[name]) != expected:
      raise UserError(
          "--%s=%s: variable %s has shape %s in the checkpoint but the model "
          "expects %s (does --bert_config_file describe this checkpoint?)"
          % (flag_name, prefix, name, list(shapes[name]), expected))
    to_restore.append((name, variable))
  if missing_base:
    raise UserError(
        "--%s=%s: %d model variable(s) missing from the checkpoint, e.g. %s "
        "(is it a BERT checkpoint of this architecture?)"
        % (flag_name, prefix, len(missing_base), ", ".join(missing_base[:3])))
  values = [(name, variable, read_tensor(reader, prefix, name, variable.dtype,
                                         flag_name))
            for name, variable in to_restore]
  return prefix, values, fresh


def load_checkpoint(model, path, flag_name="init_checkpoint",
                    require_base=True, names=None, log_restored=True):
  """Restores the model's variables from a checkpoint by original name.

  Variables absent from the checkpoint keep their current (fresh) values and
  are listed in one log line; checkpoint entries the model does not use
  (optimizer slots, `global_step`, ...) are ignored.

  Args:
    model: a BertAdapterModel (its active view) or a ModelView.
    path: checkpoint prefix or directory.
    flag_name: the flag to name in error messages.
    require_base: every base BERT variable must be present (adapters and the
      head may be absent).
    names: optional iterable restricting which checkpoint names to restore.
    log_restored: log the number of variables restored.

  Returns:
    (restored_names, fresh_names): lists of checkpoint names.

  Raises:
    UserError: on a shape or type mismatch (naming the variable), a missing
      base variable, or a tensor that cannot be read (naming the file and
      the tensor). Nothing is assigned in that case: every value is read
      before the first is assigned.
  """
  prefix, values, fresh = read_values(model, path, flag_name, require_base,
                                      names)
  for _, variable, value in values:
    variable.assign(value)
  if fresh:
    logging.info("Not in %s, kept freshly initialised (%d): %s", prefix,
                 len(fresh), _summarize_names(fresh))
  if log_restored:
    logging.info("Restored %d variables from %s", len(values), prefix)
  return [n for n, _, _ in values], fresh


def _summarize_names(names):
  """Shortens layer-repeated names: layer_{0..11}/... listed once."""
  groups = collections.OrderedDict()
  for name in names:
    m = re.match(r"^(.*/layer_)(\d+)(/.*)$", name)
    key = (m.group(1), m.group(3)) if m else (name, "")
    groups.setdefault(key, []).append(int(m.group(2)) if m else None)
  parts = []
  for (head, tail), layers in groups.items():
    if layers[0] is None:
      parts.append(head)
    elif len(layers) == 1:
      parts.append("%s%d%s" % (head, layers[0], tail))
    else:
      parts.append("%s{%d..%d}%s" % (head, min(layers), max(layers), tail))
  return ", ".join(parts)


def save_checkpoint(prefix, tensors):
  """Writes a TF1-layout name-based checkpoint (`prefix.index`, `.data-*`).

  The bundle is written under a temporary prefix in a hidden folder beside
  `prefix`, then moved into place: an existing `prefix.index` is removed
  first, the data file renamed next and the index last. A kill at any moment
  therefore leaves under `prefix` either the complete old checkpoint, no
  checkpoint (no index), or the complete new one, never an index that
  describes other data. (TensorFlow's own temporary files would otherwise be
  left beside the checkpoint by a kill, and overwriting a prefix in place
  could pair a new data file with the old index.)

  Args:
    prefix: output path prefix; its directory is created.
    tensors: mapping {checkpoint name: tensor, variable or array}.
  """
  directory = os.path.dirname(prefix) or "."
  names = sorted(tensors)
  values = [tf.convert_to_tensor(tensors[n]) for n in names]
  tmp_dir = os.path.join(directory, ".%s%d-%s" % (
      TMP_DIR_PREFIX, os.getpid(), uuid.uuid4().hex[:12]))
  try:
    tf.io.gfile.makedirs(tmp_dir)
    tmp_prefix = os.path.join(tmp_dir, "ckpt")
    tf.raw_ops.SaveV2(prefix=tmp_prefix, tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=values)
    index = prefix + ".index"
    if tf.io.gfile.exists(index):
      tf.io.gfile.remove(index)
    for name in tf.io.gfile.listdir(tmp_dir):
      if name.startswith("ckpt.data-"):
        tf.io.gfile.rename(os.path.join(tmp_dir, name),
                           prefix + name[len("ckpt"):], overwrite=True)
    tf.io.gfile.rename(tmp_prefix + ".index", index, overwrite=True)
  except (tf.errors.OpError, OSError) as e:
    # No space, no permission, a read-only file system: the checkpoint is
    # not written; those already there are untouched.
    message = getattr(e, "message", None) or getattr(e, "strerror", None) or e
    raise UserError("cannot write checkpoint %s: %s"
                    % (prefix, str(message).splitlines()[0])) from None
  finally:
    try:
      tf.io.gfile.rmtree(tmp_dir)
    except (tf.errors.OpError, OSError):
      pass


def remove_stale_temporaries(directory):
  """Removes what killed checkpoint writers left in `directory`.

  These are the hidden folders of `save_checkpoint` calls and the temporary
  files of atomic writes (the `checkpoint` state file, results) whose
  process no longer runs: both carry the writer's pid in their name. Local
  folders only.
  """
  if "://" in directory or not os.path.isdir(directory):
    return
  folder = re.compile(r"^\.%s(\d+)-[0-9a-f]+$" % re.escape(TMP_DIR_PREFIX))
  for name in os.listdir(directory):
    path = os.path.join(directory, name)
    m = folder.match(name)
    if m and not atomic_io.process_alive(int(m.group(1))):
      logging.info("Removing %s, left by an interrupted checkpoint save", path)
      shutil.rmtree(path, ignore_errors=True)
    elif atomic_io.owner_gone(name):
      logging.info("Removing %s, left by an interrupted write", path)
      try:
        os.remove(path)
      except OSError:
        pass


def write_checkpoint_state(directory, latest_prefix, all_prefixes):
  """Writes the `checkpoint` state file (atomically) so that
  tf.train.latest_checkpoint finds `latest_prefix`."""
  def rel(p):
    return os.path.relpath(p, directory) if os.path.isabs(p) else p
  lines = ['model_checkpoint_path: "%s"' % rel(latest_prefix)]
  lines += ['all_model_checkpoint_paths: "%s"' % rel(p) for p in all_prefixes]
  atomic_write_text(os.path.join(directory, "checkpoint"), "\n".join(lines) + "\n")


def model_tensors(model, names=None):
  """{checkpoint name: variable} for the whole model or a subset of names."""
  name_map = checkpoint_name_map(model)
  if names is None:
    return name_map
  return collections.OrderedDict((n, name_map[n]) for n in names)
