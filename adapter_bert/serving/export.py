"""Exports adapter-tuned BERT task(s) as a SavedModel that takes raw text.

The SavedModel tokenizes in the graph (tensorflow-text, through
`tokenization.InGraphTokenizer`), packs `[CLS] a [SEP] b [SEP]` exactly as
`packing.pack_pairs` does for training and prediction (longest-first
truncation to `max_seq_length`; an empty `text_b` means a single sentence,
`[CLS] a [SEP]`), and runs the model.

Signatures (TF Serving conventions; every input is a tf.string [batch]):

  inputs:  text_a  the sentence, or the first sentence of a pair;
           text_b  the second sentence, "" for single-sentence tasks.
  outputs of a classification task: probabilities float32 [batch, labels],
           logits float32 [batch, labels], label tf.string [batch] (the
           predicted label as the task's data files spell it);
  outputs of a regression task (STS-B): score float32 [batch].

One task (one --adapter_dir, or --checkpoint): `serving_default` and a
signature named after the task (e.g. `mrpc`) both return that task. Several
--adapter_dir on one base: one signature per task, and `serving_default`
returns all tasks in one pass, with outputs `<task>_probabilities`,
`<task>_logits`, `<task>_label` (or `<task>_score`). The vocabulary is
exported as an asset (`assets/vocab.txt`). Loading the SavedModel needs the
tensorflow-text ops (`import tensorflow_text` in Python; a TF Serving build
with TensorFlow Text ops).

The command line is scripts/export_saved_model.py (`adapter_bert.cli.export`).
"""

import json
import os
import shutil
import tempfile

from absl import logging
import tensorflow as tf

from adapter_bert import adapters
from adapter_bert.data import glue_processors
from adapter_bert.errors import UserError
from adapter_bert.model import adapter_io
from adapter_bert.model import modeling
from adapter_bert.model import multitask
from adapter_bert.storage import checkpoint_io
from adapter_bert.text import preprocessor
from adapter_bert.text import tokenization

DEFAULT_MAX_SEQ_LENGTH = 128


class ServingModule(tf.Module):
  """Raw text -> features -> a MultiTaskModel's task outputs.

  Attributes:
    model: the multitask.MultiTaskModel (base and tasks).
    tokenizer: the tokenization.InGraphTokenizer.
    vocab_file: the vocabulary, a SavedModel asset.
    max_seq_length, do_lower_case: how text is turned into features.
  """

  def __init__(self, model, vocab_file, do_lower_case, max_seq_length):
    super().__init__(name="serving")
    self.model = model
    self.preprocessor = preprocessor.BertPreprocessor(
        vocab_file, do_lower_case, max_seq_length)
    self.tokenizer = self.preprocessor.tokenizer  # Tracked: its table.
    self.vocab_file = tf.saved_model.Asset(vocab_file)

  @property
  def max_seq_length(self):
    return self.preprocessor.max_seq_length

  @property
  def do_lower_case(self):
    return self.preprocessor.do_lower_case

  def features(self, text_a, text_b):
    """Packs raw texts as input_pipeline does; dense int32 [batch, seq]."""
    tf.debugging.assert_equal(
        tf.size(text_a), tf.size(text_b),
        message="text_a and text_b must have the same batch size")
    return self.preprocessor.features(text_a, text_b)

  def task_outputs(self, branch, logits, prefix=""):
    """Named outputs of one task from its logits [batch, labels]."""
    if branch.is_regression:
      return {prefix + "score": logits[:, 0]}
    outputs = {prefix + "probabilities": tf.nn.softmax(logits, axis=-1),
               prefix + "logits": logits}
    labels = branch.label_list or [str(i) for i in range(branch.num_labels)]
    outputs[prefix + "label"] = tf.gather(
        tf.constant(labels, tf.string), tf.argmax(logits, axis=-1))
    return outputs

  def serve(self, task_names, text_a, text_b, prefixed):
    features = self.features(text_a, text_b)
    logits = self.model.call_graph(task_names, features)
    outputs = {}
    for name, value in zip(task_names, logits):
      branch = self.model.branch(name)
      prefix = multitask.task_key(name) + "_" if prefixed else ""
      outputs.update(self.task_outputs(branch, value, prefix))
    return outputs

  def signatures(self):
    """{signature name: concrete function} for tf.saved_model.save."""
    spec = (tf.TensorSpec([None], tf.string, name="text_a"),
            tf.TensorSpec([None], tf.string, name="text_b"))
    names = self.model.task_names
    result = {}

    def make(task_names, prefixed):
      # No Python control flow depends on tensors: no AutoGraph needed.
      @tf.function(input_signature=spec, autograph=False)
      def serve(text_a, text_b):
        return self.serve(task_names, text_a, text_b, prefixed)
      return serve

    for name in names:
      result[multitask.task_key(name)] = make([name], False)
    if len(names) == 1:
      result["serving_default"] = result[multitask.task_key(names[0])]
    else:
      result["serving_default"] = make(list(names), True)
    return {k: f.get_concrete_function() for k, f in result.items()}



def _parse_adapter_dir(value):
  """NAME=DIR or DIR -> (name or None, DIR)."""
  if not os.path.isdir(value) and "=" in value:
    name, directory = value.split("=", 1)
    return name or None, directory
  return None, value


def _single_value(values, what, flag):
  """The one value all tasks agree on, or raises naming the flag."""
  distinct = sorted({json.dumps(v) for v in values if v is not None})
  if len(distinct) > 1:
    raise UserError("the tasks were trained with different %s (%s); give "
                    "--%s" % (what, ", ".join(distinct), flag))
  return json.loads(distinct[0]) if distinct else None


def _load_bert_config(bert_config_file, recorded):
  if bert_config_file:
    return modeling.BertConfig.from_json_file(bert_config_file)
  if recorded is None:
    raise UserError("--bert_config_file is required")
  return modeling.BertConfig.from_dict(recorded, source="recorded bert_config")


def _run_files(checkpoint):
  """(run_config.json dict or None, its directory) beside a checkpoint."""
  directory = (checkpoint if os.path.isdir(checkpoint)
               else os.path.dirname(os.path.abspath(checkpoint)))
  path = os.path.join(directory, "run_config.json")
  if not os.path.isfile(path):
    return None, directory
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f), directory
  except (OSError, ValueError) as e:
    raise UserError("cannot read %s: %s" % (path, e)) from None


def build_model_from_adapters(bert_config_file, init_checkpoint, adapter_dirs):
  """A MultiTaskModel: the base and one task per adapter directory.

  Returns:
    (model, list of the tasks' metadata dicts).
  """
  if not init_checkpoint:
    raise UserError("--init_checkpoint is required with --adapter_dir (the "
                    "base the adapters were trained on)")
  parsed = [_parse_adapter_dir(v) for v in adapter_dirs]
  metadata = [adapter_io.read_metadata(d, "adapter_dir")[0] for _, d in parsed]
  bert_config = _load_bert_config(bert_config_file, metadata[0]["bert_config"])
  model = multitask.MultiTaskModel(bert_config)
  model.load_base(init_checkpoint)
  for name, directory in parsed:
    model.add_task(directory, task_name=name, flag_name="adapter_dir")
  return model, metadata


def build_model_from_checkpoint(bert_config_file, checkpoint, task_name=None):
  """A one-task MultiTaskModel from a full checkpoint (base and task).

  Returns:
    (model, [the task's metadata dict]).
  """
  prefix = checkpoint_io.resolve_checkpoint_path(checkpoint, "checkpoint")
  record, directory = _run_files(checkpoint)
  run_flags = (record or {}).get("flags", {})
  task = task_name or run_flags.get("task_name")
  if not task:
    raise UserError("--checkpoint=%s has no run_config.json beside it; give "
                    "--task_name" % checkpoint)
  processor = glue_processors.get_processor(task)
  recorded_config = None
  config_path = os.path.join(directory, "bert_config.json")
  if os.path.isfile(config_path):
    with open(config_path, encoding="utf-8") as f:
      recorded_config = json.load(f)
  bert_config = _load_bert_config(bert_config_file, recorded_config)
  inferred, num_labels = adapter_io.infer_adapter_config(prefix)
  config_path = os.path.join(directory, "adapter_config.json")
  if os.path.isfile(config_path):
    adapter_config = adapters.AdapterConfig.from_json_file(config_path)
    if adapter_config.enabled != inferred.enabled or (
        inferred.enabled and adapter_config.size != inferred.size):
      raise UserError("--checkpoint=%s: adapter size %d in its checkpoint but "
                      "%d in %s" % (checkpoint, inferred.size,
                                    adapter_config.size, config_path))
  else:
    adapter_config = inferred
  if num_labels is None:
    raise UserError("--checkpoint=%s has no classifier head (output_bias); "
                    "is it a fine-tuned model?" % checkpoint)
  if num_labels != processor.num_labels:
    raise UserError("--checkpoint=%s has %d outputs but task %s has %d; check "
                    "--task_name" % (checkpoint, num_labels, processor.name,
                                     processor.num_labels))
  metadata = {"task_name": processor.name,
              "label_list": processor.get_labels(),
              "is_regression": processor.is_regression,
              "max_seq_length": run_flags.get("max_seq_length"),
              "do_lower_case": run_flags.get("do_lower_case")}
  model = multitask.MultiTaskModel(bert_config)
  model.load_base(prefix, flag_name="checkpoint")
  model.add_task_from_checkpoint(prefix, processor.name, adapter_config,
                                 num_labels, metadata)
  return model, [metadata]


def export_saved_model(model, vocab_file, do_lower_case, max_seq_length,
                       export_dir, overwrite=False):
  """Writes the SavedModel of `model` (a MultiTaskModel) to `export_dir`.

  The SavedModel is written beside `export_dir` under a temporary name and
  renamed into place when complete.

  Returns:
    The list of signature names.
  """
  vocab = tokenization.load_vocab(vocab_file)
  if max(vocab.values()) + 1 != model.config.vocab_size:
    raise UserError("--vocab_file=%s has %d tokens but the model's "
                    "vocab_size is %d" % (vocab_file, max(vocab.values()) + 1,
                                          model.config.vocab_size))
  if max_seq_length > model.config.max_position_embeddings:
    raise UserError("--max_seq_length=%d exceeds max_position_embeddings=%d"
                    % (max_seq_length, model.config.max_position_embeddings))
  if max_seq_length < 3:
    raise UserError("--max_seq_length=%d is too small (at least 3)"
                    % max_seq_length)
  export_dir = os.path.abspath(export_dir)
  if os.path.exists(export_dir) and os.listdir(export_dir) and not overwrite:
    raise UserError("--export_dir=%s already exists and is not empty; use "
                    "--overwrite or a new version directory" % export_dir)
  module = ServingModule(model, vocab_file, do_lower_case,
                                   max_seq_length)
  signatures = module.signatures()
  parent = os.path.dirname(export_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix="." + os.path.basename(export_dir) + ".tmp-",
                         dir=parent)
  try:
    tf.saved_model.save(module, tmp, signatures=signatures)
    adapter_io.make_readable(tmp)
    if os.path.exists(export_dir):
      shutil.rmtree(export_dir)
    os.rename(tmp, export_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("Exported %s (tasks %s, max_seq_length %d, do_lower_case %s) "
               "with signatures %s", export_dir, ", ".join(model.task_names),
               max_seq_length, do_lower_case, ", ".join(sorted(signatures)))
  return sorted(signatures)


def export_tflite(model, path, max_seq_length):
  """Writes the TFLite (LiteRT) model of the one task of `model`.

  Inputs: input_ids, input_mask, segment_ids int32 [batch, max_seq_length]
  (packed as the input pipeline packs them, padded with 0); outputs:
  probabilities and logits float32 [batch, labels]. A LoRA or (IA)^3
  adapter is merged into the base weights for the conversion (and taken
  out again after). TensorFlow ops without a TFLite builtin are kept
  (SELECT_TF_OPS, run by the Flex delegate that TensorFlow's interpreter
  includes).

  Raises:
    UserError: for several tasks.
  """
  if len(model.task_names) != 1:
    raise UserError("--tflite exports one task; got %s"
                    % ", ".join(model.task_names))
  name = model.task_names[0]
  base = model.model
  adapter = model.branch(name).adapter_name
  merged = False
  if adapter in base.adapter_configs and base.can_merge(adapter):
    try:
      base.merge_adapter(adapter)
      merged = True
    except UserError as e:  # A gated LoRA, say: it runs unmerged.
      logging.info("--tflite: %s; the adapter runs unmerged", e)
  spec = [tf.TensorSpec([None, max_seq_length], tf.int32, name=n)
          for n in modeling.INPUT_NAMES]

  @tf.function(input_signature=spec, autograph=False)
  def classify(input_ids, input_mask, segment_ids):
    logits, = model.call_graph([name], {"input_ids": input_ids,
                                        "input_mask": input_mask,
                                        "segment_ids": segment_ids})
    return {"probabilities": tf.nn.softmax(logits, axis=-1),
            "logits": logits}

  try:
    # The weights become constants of the graph (the converter keeps
    # variables as resources that its output never initialises), and a
    # function of named inputs and outputs wraps the frozen graph, so that
    # the model has a signature.
    from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top
    concrete = classify.get_concrete_function()
    frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)

    @tf.function(input_signature=spec, autograph=False)
    def serving(input_ids, input_mask, segment_ids):
      out = frozen(input_ids=input_ids, input_mask=input_mask,
                   segment_ids=segment_ids)
      return tf.nest.pack_sequence_as(concrete.structured_outputs,
                                      tf.nest.flatten(out))

    holder = tf.Module()
    holder.serving = serving
    staging = tempfile.mkdtemp(prefix=".tflite-", dir=os.path.dirname(
        os.path.abspath(path)))
    try:  # A SavedModel without variables: the signature's names stay.
      tf.saved_model.save(
          holder, staging,
          signatures={"serving_default": serving.get_concrete_function()},
          options=tf.saved_model.SaveOptions(
              experimental_custom_gradients=False))
      converter = tf.lite.TFLiteConverter.from_saved_model(staging)
      converter.target_spec.supported_ops = [
          tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
      flat = converter.convert()
    finally:
      shutil.rmtree(staging, ignore_errors=True)
  finally:
    if merged:
      base.reset_adapter(adapter)
  tmp = path + ".tmp-%d" % os.getpid()
  with open(tmp, "wb") as f:
    f.write(flat)
  os.replace(tmp, path)
  logging.info("Wrote %s (%d bytes, adapter %s%s)", path, len(flat), adapter,
               " merged" if merged else "")
  return path


def resolve_text_settings(metadata, do_lower_case=None, max_seq_length=None):
  """do_lower_case and max_seq_length from the flags or the tasks' records.

  Args:
    metadata: the tasks' metadata dicts.
    do_lower_case: the flag value, None when not given.
    max_seq_length: the flag value, None when not given.

  Returns:
    (do_lower_case, max_seq_length).

  Raises:
    UserError: when the flag contradicts the casing the tasks were trained
      with, or the tasks disagree and no flag decides.
  """
  casings = [m.get("do_lower_case") for m in metadata]
  if do_lower_case is None:
    casing = _single_value(casings, "do_lower_case", "do_lower_case")
    do_lower_case = True if casing is None else bool(casing)
  for casing in casings:
    if casing is not None and bool(casing) != bool(do_lower_case):
      raise UserError("--do_lower_case=%s but the task was trained with "
                      "do_lower_case=%s" % (do_lower_case, casing))
  lengths = [m.get("max_seq_length") for m in metadata]
  if max_seq_length is None:
    max_seq_length = (_single_value(lengths, "max_seq_length",
                                    "max_seq_length")
                      or DEFAULT_MAX_SEQ_LENGTH)
  elif any(n is not None and n != max_seq_length for n in lengths):
    logging.warning("--max_seq_length=%d differs from the %s the tasks were "
                    "trained with", max_seq_length,
                    sorted({n for n in lengths if n is not None}))
  return bool(do_lower_case), int(max_seq_length)
