"""Hugging Face BERT directories as bases: config, names and shapes.

A directory with `config.json` (model_type "bert") and `model.safetensors`
or `pytorch_model.bin` (read without PyTorch, see storage.torch_formats)
is a base like Google's TF1 checkpoint: its tensors are renamed to the
TF1 names (`encoder.layer.3.attention.self.query.weight` ->
`bert/encoder/layer_3/attention/self/query/kernel`, transposed: torch's
Linear holds [out, in]) and checked against the model's shapes when
loaded. Hugging Face's "gelu" is the erf form, this toolkit's
"gelu_exact"; its "gelu_new" / "gelu_pytorch_tanh" are the tanh form, this
toolkit's "gelu".
"""

import collections
import json
import os
import re

import numpy as np

from adapter_bert.storage import torch_formats
from adapter_bert.errors import UserError
from adapter_bert.errors import clip_value

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Hugging Face's hidden_act -> this toolkit's (compute/activations.py).
ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu",
               "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu",
               "relu": "relu", "tanh": "tanh", "swish": "swish",
               "silu": "swish"}
_IGNORED = ("embeddings.position_ids", "cls.")


def is_hf_dir(path):
  """Whether `path` is a directory of a Hugging Face model."""
  return (os.path.isdir(str(path))
          and os.path.isfile(os.path.join(path, CONFIG_FILE))
          and torch_formats.exists_any(path, WEIGHT_FILES) is not None)


def is_hf_config(json_object):
  return isinstance(json_object, dict) and (
      "model_type" in json_object or "architectures" in json_object)


def bert_config_dict(hf, source):
  """Google's bert_config fields from a Hugging Face BertConfig dict.

  Raises:
    UserError: for another model type or a setting this model lacks.
  """
  if not isinstance(hf, dict):
    raise UserError("%s: expected a JSON object, got %s"
                    % (source, type(hf).__name__))
  if hf.get("model_type", "bert") != "bert":
    raise UserError("%s: model_type %s is not a BERT (this toolkit runs BERT "
                    "encoders)"
                    % (source, clip_value(repr(hf.get("model_type")))))
  eps = hf.get("layer_norm_eps", 1e-12)
  if isinstance(eps, bool) or not isinstance(eps, (int, float)):
    raise UserError("%s: layer_norm_eps is %s; expected a number (this "
                    "BERT's LayerNorms use 1e-12)" % (source, clip_value(eps)))
  if abs(eps - 1e-12) > 1e-15:
    raise UserError("%s: layer_norm_eps=%g; this BERT's LayerNorms use 1e-12"
                    % (source, eps))
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise UserError("%s: position_embedding_type %s is not supported "
                    "(absolute only)" % (
                        source,
                        clip_value(repr(hf.get("position_embedding_type")))))
  act = hf.get("hidden_act", "gelu")
  if not isinstance(act, str) or act not in ACTIVATIONS:
    raise UserError("%s: hidden_act %s has no counterpart here (known: %s)"
                    % (source, clip_value(repr(act)),
                       ", ".join(sorted(ACTIVATIONS))))
  keys = ("vocab_size", "hidden_size", "num_hidden_layers",
          "num_attention_heads", "intermediate_size", "hidden_dropout_prob",
          "attention_probs_dropout_prob", "max_position_embeddings",
          "type_vocab_size", "initializer_range")
  missing = [k for k in keys if k not in hf]
  if missing:
    raise UserError("%s: missing key(s) %s" % (source, ", ".join(missing)))
  out = {k: hf[k] for k in keys}
  out["hidden_act"] = ACTIVATIONS[act]
  return out


def read_config(directory):
  """The bert_config dict of a Hugging Face directory."""
  path = os.path.join(directory, CONFIG_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError("%s: cannot read: %s" % (path, e)) from None
  return bert_config_dict(hf, path)


def _tf1_name(name):
  """The TF1 name of a Hugging Face BERT tensor name (and whether it is a
  Linear weight, stored transposed), or None for a name that is not BERT's
  encoder."""
  name = name[len("bert."):] if name.startswith("bert.") else name
  leaf = {"weight": "kernel", "bias": "bias", "gamma": "gamma",
          "beta": "beta"}
  m = re.match(r"^embeddings\.(word|position|token_type)_embeddings\.weight$",
               name)
  if m:
    return "bert/embeddings/%s_embeddings" % m.group(1), False
  m = re.match(r"^embeddings\.LayerNorm\.(weight|bias|gamma|beta)$", name)
  if m:
    return "bert/embeddings/LayerNorm/" + {
        "weight": "gamma", "bias": "beta"}.get(m.group(1), m.group(1)), False
  m = re.match(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|gamma|beta)$",
               name)
  if m:
    layer, part, what = m.groups()
    if part.endswith("LayerNorm"):
      what = {"weight": "gamma", "bias": "beta"}.get(what, what)
      return "bert/encoder/layer_%s/%s/%s" % (
          layer, part.replace(".", "/"), what), False
    if part in ("attention.self.query", "attention.self.key",
                "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense"):
      return "bert/encoder/layer_%s/%s/%s" % (
          layer, part.replace(".", "/"), leaf[what]), what == "weight"
    return None
  m = re.match(r"^pooler\.dense\.(weight|bias)$", name)
  if m:
    return "bert/pooler/dense/" + leaf[m.group(1)], m.group(1) == "weight"
  return None


def tf1_tensors(state, source):
  """{TF1 name: array} of a Hugging Face BERT state dict.

  Raises:
    UserError: for a tensor of the encoder that has no TF1 name.
  """
  out = collections.OrderedDict()
  unknown = []
  for name, value in state.items():
    if name.startswith(_IGNORED) or name.startswith(
        tuple("bert." + p for p in _IGNORED)):
      continue
    mapped = _tf1_name(name)
    if mapped is None:
      unknown.append(name)
      continue
    tf1, transpose = mapped
    out[tf1] = np.ascontiguousarray(value.T if transpose else value)
  if unknown:
    raise UserError("%s: tensor(s) that are not BERT's encoder: %s"
                    % (source, ", ".join(unknown[:3])))
  return out


def hf_tensors(tf1, prefix=""):
  """The inverse: {Hugging Face name: array} of TF1-named tensors."""
  out = collections.OrderedDict()
  for name, value in tf1.items():
    hf = name[len("bert/"):]
    hf = re.sub(r"layer_(\d+)", r"layer.\1", hf).replace("/", ".")
    hf = hf.replace("encoder.layer.", "encoder.layer.")
    value = np.asarray(value)
    if hf.endswith(".kernel"):
      hf, value = hf[:-len("kernel")] + "weight", value.T
    elif hf.endswith(".gamma"):
      hf = hf[:-len("gamma")] + "weight"
    elif hf.endswith(".beta"):
      hf = hf[:-len("beta")] + "bias"
    elif hf.endswith("_embeddings"):
      hf += ".weight"
    out[prefix + hf] = np.ascontiguousarray(value)
  return out


class Reader:
  """A Hugging Face directory read as a TF checkpoint reader (the methods
  storage.checkpoint_io uses)."""

  def __init__(self, directory):
    path = torch_formats.exists_any(directory, WEIGHT_FILES)
    self.path = path
    self.tensors = tf1_tensors(torch_formats.read_tensors(path), path)

  def get_variable_to_shape_map(self):
    return {k: list(v.shape) for k, v in self.tensors.items()}

  def get_variable_to_dtype_map(self):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return {k: tf.as_dtype(v.dtype) for k, v in self.tensors.items()}

  def get_tensor(self, name):
    return self.tensors[name]
