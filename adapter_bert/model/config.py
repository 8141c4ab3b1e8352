"""The BERT configuration and the reference's numeric constants.
"""

import copy
import json

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
from absl import logging
import tensorflow as tf

from adapter_bert.compute.activations import ACTIVATIONS
from adapter_bert.errors import UserError
from adapter_bert.storage import huggingface


LAYER_NORM_EPSILON = 1e-12
MASK_ADDER = -10000.0
# Dropout on the pooled output before the classifier, as the original
# run_classifier.py (keep_prob 0.9) whatever the config says.
CLASSIFIER_DROPOUT = 0.1


class BertConfig:
  """The fields of Google's `bert_config.json`.

  Attributes:
    vocab_size: size of the WordPiece vocabulary.
    hidden_size: width H of every layer.
    num_hidden_layers: number of transformer blocks L.
    num_attention_heads: heads per attention layer; must divide H.
    intermediate_size: width of the feed-forward layer.
    hidden_act: activation of the feed-forward layer ("gelu" = tanh form).
    hidden_dropout_prob: dropout on embeddings and block outputs.
    attention_probs_dropout_prob: dropout on attention probabilities.
    max_position_embeddings: longest sequence the model can take.
    type_vocab_size: number of segment ids.
    initializer_range: stddev of the truncated-normal weight init.
    extra: keys of the JSON file this class does not know, kept verbatim.
  """

  FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers",
            "num_attention_heads", "intermediate_size", "hidden_act",
            "hidden_dropout_prob", "attention_probs_dropout_prob",
            "max_position_embeddings", "type_vocab_size", "initializer_range")

  def __init__(self, vocab_size, hidden_size=768, num_hidden_layers=12,
               num_attention_heads=12, intermediate_size=3072,
               hidden_act="gelu", hidden_dropout_prob=0.1,
               attention_probs_dropout_prob=0.1, max_position_embeddings=512,
               type_vocab_size=16, initializer_range=0.02, extra=None,
               source="BertConfig"):
    self.vocab_size = vocab_size
    self.hidden_size = hidden_size
    self.num_hidden_layers = num_hidden_layers
    self.num_attention_heads = num_attention_heads
    self.intermediate_size = intermediate_size
    self.hidden_act = hidden_act
    self.hidden_dropout_prob = hidden_dropout_prob
    self.attention_probs_dropout_prob = attention_probs_dropout_prob
    self.max_position_embeddings = max_position_embeddings
    self.type_vocab_size = type_vocab_size
    self.initializer_range = initializer_range
    self.extra = dict(extra or {})
    self.validate(source)

  def validate(self, source="BertConfig"):
    """Checks the values; raises UserError naming `source` and the field."""
    def fail(msg):
      raise UserError("%s: %s" % (source, msg))

    for name in ("vocab_size", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        fail("%s must be a positive integer, got %r" % (name, value))
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, (int, float))
          or not 0.0 <= value < 1.0):
        fail("%s must be in [0, 1), got %r" % (name, value))
    if (isinstance(self.initializer_range, bool)
        or not isinstance(self.initializer_range, (int, float))
        or not self.initializer_range > 0):
      fail("initializer_range must be > 0, got %r" % (self.initializer_range,))
    if self.hidden_size % self.num_attention_heads:
      fail("hidden_size %d is not a multiple of num_attention_heads %d"
           % (self.hidden_size, self.num_attention_heads))
    if str(self.hidden_act).lower() not in ACTIVATIONS:
      fail("unknown hidden_act %r; expected one of %s"
           % (self.hidden_act, ", ".join(sorted(ACTIVATIONS))))

  @classmethod
  def from_dict(cls, json_object, source="BertConfig"):
    """Builds a config from a dict with every key of Google's format.

    Raises:
      UserError: on a missing key or a bad value. Unknown keys are kept in
        `extra` with a warning.
    """
    if not isinstance(json_object, dict):
      raise UserError("%s: expected a JSON object, got %s"
                      % (source, type(json_object).__name__))
    missing = [k for k in cls.FIELDS if k not in json_object]
    if missing:
      raise UserError("%s: missing key(s) %s" % (source, ", ".join(missing)))
    extra = {k: v for k, v in json_object.items() if k not in cls.FIELDS}
    if extra:
      logging.warning("%s: unknown key(s) kept as-is: %s", source,
                      ", ".join(sorted(extra)))
    kwargs = {k: json_object[k] for k in cls.FIELDS}
    return cls(extra=extra, source=source, **kwargs)

  @classmethod
  def from_json_file(cls, json_file):
    """Reads a `bert_config.json`.

    Raises:
      UserError: if the file is missing, unreadable, not JSON, or invalid.
    """
    try:
      with tf.io.gfile.GFile(json_file, "rb") as reader:  # Also gs://...
        data = reader.read()
    except (OSError, tf.errors.OpError) as e:
      reason = getattr(e, "strerror", None) or getattr(e, "message", None) or e
      raise UserError("cannot read BERT config %s: %s"
                      % (json_file, reason)) from None
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError as e:
      raise UserError("BERT config %s is not UTF-8 text (%s at byte %d)"
                      % (json_file, e.reason, e.start)) from None
    try:
      json_object = json.loads(text)
    except ValueError as e:
      raise UserError("BERT config %s is not valid JSON: %s"
                      % (json_file, e)) from None
    if huggingface.is_hf_config(json_object):  # A Hugging Face config.json.
      json_object = huggingface.bert_config_dict(json_object, str(json_file))
    return cls.from_dict(json_object, source=str(json_file))

  def to_dict(self):
    output = {k: getattr(self, k) for k in self.FIELDS}
    output.update(copy.deepcopy(self.extra))
    return output

  def to_json_string(self):
    return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

  def __eq__(self, other):
    return isinstance(other, BertConfig) and self.to_dict() == other.to_dict()

  def __repr__(self):
    return "BertConfig(%s)" % ", ".join(
        "%s=%r" % (k, getattr(self, k)) for k in self.FIELDS)


def as_bert_config(config):
  """A BertConfig from a BertConfig or its dict (as in get_config)."""
  return config if isinstance(config, BertConfig) else BertConfig.from_dict(config)
