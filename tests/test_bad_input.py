"""Bad input: one clear `error:` line, exit 1, no traceback, nothing written.

Every case runs the command line (`run_classifier.run_main`, the code behind
`python run_classifier.py`) on a tiny model and MRPC-layout data with one
thing wrong, and checks that:

  * the exit status is 1;
  * stderr holds exactly one line that is not a log line, it starts with
    `error: ` and names what is wrong and where (flag, file, line);
  * no "Traceback" appears anywhere, and stdout is empty;
  * the output_dir given is byte-for-byte what it was: a prepared folder
    (sentinel, a fake eval_results.txt, test_results.tsv and features/
    file) keeps exactly its files, and a fresh path is not created.

Cases caught by the flag checks run as separate `run_classifier.py`
processes and must fail before TensorFlow is even imported (stderr is the
error line alone). The cases that need TensorFlow would each spend most of
their time importing it, so they run in two driver processes that import it
once and call `run_classifier.run_main()` once per case with its own argv,
fresh flag values, and stdout/stderr (file descriptors 1 and 2) redirected
to the case's files; the exit status is the SystemExit code. One of them
(a fresh-output_dir variant) runs as its own process instead and must give
the same message as in the driver, and the replica-count case runs in a
process whose CPU is split into two logical devices.
"""

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from adapter_bert.compute import tf_startup
import tiny_fixtures

REPO_ROOT = tiny_fixtures.REPO_ROOT

# Log lines that may precede the error: absl's Python logging, and
# TensorFlow's C++ logging (before and after absl::InitializeLog).
_LOG_LINE = re.compile(
    r"^([IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called)")

# Runs the CLI in a process that splits its CPU into two logical devices, as
# on a host with two accelerators: --distribution=mirrored then has two
# replicas.
_TWO_DEVICE_CLI = """
import sys
sys.path.insert(0, %r)
from absl import logging
logging.use_absl_handler()  # Before TensorFlow, as under app.run.
from adapter_bert.compute import tf_startup
tf = tf_startup.import_quietly()
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.argv[0] = "run_classifier.py"
from adapter_bert.cli import classifier as run_classifier
run_classifier.run_main()
""" % REPO_ROOT

# Runs several command lines in one process (see the module docstring).
_DRIVER = """
import json, os, sys, traceback
sys.path.insert(0, %r)
from adapter_bert.cli import classifier as run_classifier
from absl import flags

jobs_file, codes_file = sys.argv[1:3]
with open(jobs_file) as f:
  jobs = json.load(f)
codes = {}
for job in jobs:
  flags.FLAGS.unparse_flags()
  sys.argv = ["run_classifier.py"] + job["args"]
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(1), os.dup(2)
  out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(out, 1)
  os.dup2(err, 2)
  try:
    run_classifier.run_main()
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # What the interpreter would print and exit with.
    traceback.print_exc()
    code = 1
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in (out, err) + saved:
      os.close(fd)
  codes[job["id"]] = code
with open(codes_file, "w") as f:
  json.dump(codes, f)
""" % REPO_ROOT

_TOKENS = tiny_fixtures.SPECIAL + tiny_fixtures.WORDS + tiny_fixtures.PIECES
VOCAB_SIZE = len(_TOKENS)
HOUSE_LINE = _TOKENS.index("house") + 1  # The line made invalid UTF-8.

PREPARED = {
    "sentinel.txt": b"do not touch\n",
    "eval_results.txt": b"eval_accuracy = 0.875\nglobal_step = 1234\n",
    "test_results.tsv": b"0.25\t0.75\n0.6\t0.4\n",
    "features/keep.txt": b"an earlier feature cache\n",
}


def snapshot(root):
  """{relative path: sha256 or '<dir>'} of everything under `root`."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    rel = os.path.relpath(dirpath, root)
    for d in dirnames:
      out[os.path.normpath(os.path.join(rel, d))] = "<dir>"
    for f in filenames:
      with open(os.path.join(dirpath, f), "rb") as fh:
        out[os.path.normpath(os.path.join(rel, f))] = hashlib.sha256(
            fh.read()).hexdigest()
  return out


def _write(path, content, mode="w"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, mode) as f:
    f.write(content)
  return path


def _replace_line(path, line_number, new_line):
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  lines[line_number - 1] = new_line
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


def _build_inputs(root):
  """Writes the good job and every broken variant; returns a dict of paths."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from adapter_bert.model import adapter_io  # pylint: disable=g-import-not-at-top
  from adapter_bert import adapters  # pylint: disable=g-import-not-at-top
  from adapter_bert.storage import checkpoint_io  # pylint: disable=g-import-not-at-top
  from adapter_bert.model import modeling  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  base = tiny_fixtures.make_job(root)
  model_dir = os.path.dirname(base["vocab_file"])
  p = {"base": base, "model_dir": model_dir}
  good_data = base["data_dir"]

  # Configs.
  with open(base["bert_config_file"]) as f:
    config = json.load(f)
  p["config_malformed"] = _write(
      os.path.join(root, "configs", "malformed.json"),
      json.dumps(config, indent=2).replace('"hidden_size": 16,',
                                           '"hidden_size": 16,,'))
  p["config_not_utf8"] = _write(
      os.path.join(root, "configs", "latin1.json"),
      json.dumps(dict(config, hidden_act="g\u00e9lu"),
                 ensure_ascii=False).encode("latin-1"), "wb")
  p["config_heads"] = _write(os.path.join(root, "configs", "heads.json"),
                             json.dumps(dict(config, hidden_size=15)))
  p["config_dropout"] = _write(
      os.path.join(root, "configs", "dropout.json"),
      json.dumps(dict(config, hidden_dropout_prob=1.5)))
  p["config_missing_key"] = _write(
      os.path.join(root, "configs", "missing.json"),
      json.dumps({k: v for k, v in config.items() if k != "vocab_size"}))

  # Vocabularies.
  with open(base["vocab_file"], encoding="utf-8") as f:
    vocab = f.read()
  p["vocab_bigger"] = _write(os.path.join(root, "vocabs", "bigger.txt"),
                             vocab + "extra1\nextra2\n")
  p["vocab_not_utf8"] = _write(os.path.join(root, "vocabs", "latin1.txt"),
                               vocab.encode("utf-8").replace(
                                   b"house", b"h\xe9use"), "wb")

  # Checkpoints.
  big = tiny_fixtures.write_model(os.path.join(root, "hidden32"), seed=3,
                                  hidden_size=32, intermediate_size=64)
  p["ckpt_hidden32"] = big["init_checkpoint"]
  corrupt_dir = os.path.join(root, "corrupt")
  os.makedirs(corrupt_dir)
  for name in os.listdir(model_dir):
    if name.startswith("bert_model.ckpt"):
      shutil.copy(os.path.join(model_dir, name), corrupt_dir)
  _write(os.path.join(corrupt_dir, "bert_model.ckpt.index"),
         b"\x00this is not a tensor bundle index\x00" * 4, "wb")
  p["ckpt_corrupt"] = os.path.join(corrupt_dir, "bert_model.ckpt")
  # A checkpoint whose data file was cut short (a copy that did not finish).
  truncated_dir = os.path.join(root, "truncated")
  os.makedirs(truncated_dir)
  for name in os.listdir(model_dir):
    if name.startswith("bert_model.ckpt"):
      shutil.copy(os.path.join(model_dir, name), truncated_dir)
  data_file = os.path.join(truncated_dir,
                           "bert_model.ckpt.data-00000-of-00001")
  with open(data_file, "rb") as f:
    data = f.read()
  _write(data_file, data[:len(data) // 2], "wb")
  p["ckpt_truncated"] = os.path.join(truncated_dir, "bert_model.ckpt")
  # A base tensor stored as a string, and a LayerNorm weight as int32.
  reader = tf.train.load_checkpoint(base["init_checkpoint"])
  good = {n: reader.get_tensor(n)
          for n in reader.get_variable_to_shape_map()}
  ln_name = "bert/encoder/layer_0/output/LayerNorm/gamma"
  for kind, value in (("string", tf.fill(good[ln_name].shape, "1.0")),
                      ("int32", tf.ones(good[ln_name].shape, tf.int32))):
    tensors = dict(good)
    tensors[ln_name] = value
    prefix = os.path.join(root, "ckpt_" + kind, "bert_model.ckpt")
    checkpoint_io.save_checkpoint(prefix, tensors)
    p["ckpt_" + kind] = prefix
  uncased_dir = os.path.join(root, "uncased_L-2_H-16_A-2")
  shutil.copytree(model_dir, uncased_dir)
  p["ckpt_uncased"] = os.path.join(uncased_dir, "bert_model.ckpt")

  # An adapter trained (here: saved) on top of another base model: same
  # config and task, other base weights.
  other = tiny_fixtures.write_model(os.path.join(root, "other_base"), seed=9)
  bert_config = modeling.BertConfig.from_json_file(other["bert_config_file"])
  adapter_config = adapters.AdapterConfig(size=base["adapter_size"])
  model = modeling.BertClassifier(bert_config, 2, adapter_config)
  checkpoint_io.load_checkpoint(model, other["init_checkpoint"])
  trainable = modeling.set_train_mode(model, "adapters")
  for _, variable in trainable:
    variable.assign(tf.fill(variable.shape, 0.01))
  from adapter_bert.data import glue_processors  # pylint: disable=g-import-not-at-top
  p["adapter_other_base"] = adapter_io.save_adapter(
      model, trainable, os.path.join(root, "other_adapter", "adapter"),
      adapter_config=adapter_config,
      run_config={"task_name": "MRPC", "max_seq_length": 24,
                  "do_lower_case": True, "train_mode": "adapters"},
      bert_config=bert_config,
      processor=glue_processors.get_processor("MRPC"),
      init_checkpoint=other["init_checkpoint"])
  # An adapter of this base whose data file was cut short.
  model = modeling.BertClassifier(
      modeling.BertConfig.from_json_file(base["bert_config_file"]), 2,
      adapter_config)
  model.load_base_checkpoint(base["init_checkpoint"])
  trainable = modeling.set_train_mode(model, "adapters")

  def save_this_base_adapter(folder):
    return adapter_io.save_adapter(
        model, trainable, os.path.join(root, folder, "adapter"),
        adapter_config=adapter_config,
        run_config={"task_name": "MRPC", "max_seq_length": 24,
                    "do_lower_case": True, "train_mode": "adapters"},
        bert_config=model.config,
        processor=glue_processors.get_processor("MRPC"),
        init_checkpoint=base["init_checkpoint"])

  truncated_adapter = save_this_base_adapter("truncated_adapter")
  data_file = os.path.join(truncated_adapter,
                           "adapter.ckpt.data-00000-of-00001")
  with open(data_file, "rb") as f:
    data = f.read()
  _write(data_file, data[:len(data) // 3], "wb")
  p["adapter_truncated"] = truncated_adapter
  # A whole adapter-bert adapter directory of this base.
  p["adapter_reference"] = save_this_base_adapter("reference_adapter")
  del np
  # Adapter method configs.
  p["adapter_cfg_field"] = _write(
      os.path.join(root, "adapter_configs", "field.json"),
      json.dumps({"architecture": "lora", "rank": 4}))
  p["adapter_cfg_range"] = _write(
      os.path.join(root, "adapter_configs", "range.json"),
      json.dumps({"architecture": "lora", "r": 0}))

  # Data.
  def data_copy(name):
    d = os.path.join(root, "data_" + name)
    shutil.copytree(good_data, d)
    return d

  d = data_copy("columns")
  _replace_line(os.path.join(d, "train.tsv"), 5, "1\t11\t12\tonly one text")
  p["data_columns"] = d
  d = data_copy("label")
  with open(os.path.join(d, "dev.tsv"), encoding="utf-8") as f:
    line3 = f.read().split("\n")[2]
  _replace_line(os.path.join(d, "dev.tsv"), 3, "7" + line3[1:])
  p["data_label"] = d
  d = data_copy("empty_dev")
  with open(os.path.join(d, "dev.tsv"), encoding="utf-8") as f:
    header = f.readline()
  _write(os.path.join(d, "dev.tsv"), header)
  p["data_empty_dev"] = d
  d = data_copy("no_test")
  os.remove(os.path.join(d, "test.tsv"))
  p["data_no_test"] = d
  p["a_file"] = _write(os.path.join(root, "plain_file.txt"), "I am a file\n")
  return p


def _cases(p):
  """(id, flag overrides, expected substrings of the error, options)."""
  base = p["base"]
  missing = os.path.join(os.path.dirname(p["model_dir"]), "does_not_exist")
  train_tsv = os.path.join(base["data_dir"], "train.tsv")
  return [
      # Flag values (checked before TensorFlow is imported).
      ("no_do_flag", {"do_train": False},
       ["--do_train", "--do_eval", "--do_predict"], {}),
      ("learning_rate_zero", {"learning_rate": 0}, ["--learning_rate", "0"], {}),
      ("learning_rate_negative", {"learning_rate": -1e-5},
       ["--learning_rate", "-1e-05"], {}),
      ("epochs_zero", {"num_train_epochs": 0}, ["--num_train_epochs", "0"], {}),
      ("epochs_negative", {"num_train_epochs": -2},
       ["--num_train_epochs", "-2"], {}),
      ("epochs_infinite", {"num_train_epochs": "inf"},
       ["--num_train_epochs", "finite", "inf"], {}),
      ("learning_rate_nan", {"learning_rate": "nan"},
       ["--learning_rate", "finite", "nan"], {}),
      ("seed_negative", {"seed": -1}, ["--seed", "[0, 2147483647]", "-1"], {}),
      ("seed_too_large", {"seed": 2**40},
       ["--seed", "[0, 2147483647]", str(2**40)], {}),
      ("max_seq_length_below_3", {"max_seq_length": 2},
       ["--max_seq_length=2", "3"], {}),
      ("batch_size_zero", {"train_batch_size": 0}, ["--train_batch_size", "0"],
       {}),
      ("micro_batch_negative", {"micro_batch_size": -4},
       ["--micro_batch_size", "-4"], {}),
      ("unparseable_int", {"max_seq_length": "abc"},
       ["--max_seq_length", "abc"], {}),
      ("unparseable_float", {"learning_rate": "fast"},
       ["--learning_rate", "fast"], {}),
      ("unparseable_bool", {"do_eval": "maybe"}, ["do_eval", "maybe"], {}),
      ("unknown_flag", {"no_such_flag": 1}, ["no_such_flag"], {}),
      ("unknown_task", {"task_name": "MRPX"}, ["--task_name=MRPX", "mrpc"], {}),
      ("missing_vocab", {"vocab_file": missing},
       ["--vocab_file=" + missing, "not found"], {}),
      ("vocab_is_a_directory", {"vocab_file": p["model_dir"]},
       ["--vocab_file=" + p["model_dir"], "directory"], {}),
      ("missing_config", {"bert_config_file": missing},
       ["--bert_config_file=" + missing, "not found"], {}),
      ("missing_data_dir", {"data_dir": missing},
       ["--data_dir=" + missing, "not found"], {}),
      ("data_dir_is_a_file", {"data_dir": train_tsv},
       ["--data_dir=" + train_tsv, "not a directory"], {}),
      # Config files.
      ("config_malformed_json", {"bert_config_file": p["config_malformed"]},
       [p["config_malformed"], "not valid JSON", "line 3"], {}),
      ("config_not_utf8", {"bert_config_file": p["config_not_utf8"]},
       [p["config_not_utf8"], "UTF-8"], {}),
      ("config_hidden_not_multiple_of_heads",
       {"bert_config_file": p["config_heads"]},
       [p["config_heads"], "hidden_size 15", "num_attention_heads 2"], {}),
      ("config_dropout_out_of_range", {"bert_config_file": p["config_dropout"]},
       [p["config_dropout"], "hidden_dropout_prob", "1.5"], {}),
      ("config_missing_key", {"bert_config_file": p["config_missing_key"]},
       [p["config_missing_key"], "vocab_size"], {}),
      ("max_seq_length_above_positions", {"max_seq_length": 65},
       ["--max_seq_length=65", "max_position_embeddings=64",
        base["bert_config_file"]], {}),
      # Vocabularies.
      ("vocab_size_mismatch", {"vocab_file": p["vocab_bigger"]},
       ["--vocab_file=" + p["vocab_bigger"], "%d tokens" % (VOCAB_SIZE + 2),
        "vocab_size=%d" % VOCAB_SIZE], {}),
      ("vocab_not_utf8", {"vocab_file": p["vocab_not_utf8"]},
       [p["vocab_not_utf8"], "line %d" % HOUSE_LINE, "UTF-8"], {}),
      # Checkpoints.
      ("missing_checkpoint", {"init_checkpoint": missing + "/bert_model.ckpt"},
       ["--init_checkpoint=" + missing + "/bert_model.ckpt"], {}),
      ("corrupt_checkpoint", {"init_checkpoint": p["ckpt_corrupt"]},
       ["--init_checkpoint=" + p["ckpt_corrupt"], "cannot read checkpoint"],
       {}),
      ("checkpoint_data_truncated", {"init_checkpoint": p["ckpt_truncated"]},
       ["--init_checkpoint=" + p["ckpt_truncated"], "cannot be read from",
        p["ckpt_truncated"] + ".data-00000-of-00001", "tensor bert/"], {}),
      ("checkpoint_string_tensor", {"init_checkpoint": p["ckpt_string"]},
       ["--init_checkpoint=" + p["ckpt_string"],
        "bert/encoder/layer_0/output/LayerNorm/gamma is string",
        "expects float32"], {}),
      ("checkpoint_int32_tensor", {"init_checkpoint": p["ckpt_int32"]},
       ["--init_checkpoint=" + p["ckpt_int32"],
        "bert/encoder/layer_0/output/LayerNorm/gamma is int32",
        "expects float32"], {}),
      ("adapter_data_truncated",
       {"adapter_checkpoint": p["adapter_truncated"], "do_eval": True},
       ["--adapter_checkpoint=" + p["adapter_truncated"], "cannot be read"],
       {}),
      ("checkpoint_of_another_size", {"init_checkpoint": p["ckpt_hidden32"]},
       ["--init_checkpoint=" + p["ckpt_hidden32"], "[%d, 32]" % VOCAB_SIZE,
        "[%d, 16]" % VOCAB_SIZE],
       {}),
      ("checkpoint_of_another_size_fresh_output_dir",
       {"init_checkpoint": p["ckpt_hidden32"]},
       ["--init_checkpoint=" + p["ckpt_hidden32"], "shape"], {"fresh": True}),
      ("casing_does_not_fit_checkpoint",
       {"init_checkpoint": p["ckpt_uncased"], "do_lower_case": False},
       ["--do_lower_case", "uncased_L-2_H-16_A-2"], {}),
      ("adapter_of_another_base",
       {"adapter_checkpoint": p["adapter_other_base"], "do_eval": True},
       ["--adapter_checkpoint=" + p["adapter_other_base"], "another base"],
       {}),
      ("adapter_of_another_base_fresh_output_dir",
       {"adapter_checkpoint": p["adapter_other_base"], "do_eval": True},
       ["--adapter_checkpoint=" + p["adapter_other_base"], "another base"],
       {"fresh": True}),
      ("adapter_checkpoint_missing", {"adapter_checkpoint": missing},
       ["--adapter_checkpoint=" + missing, "not found"], {}),
      # Adapter methods.
      ("adapter_config_unknown", {"adapter_config": "pfeifer"},
       ["--adapter_config=pfeifer", "unknown adapter preset 'pfeifer'",
        "pfeiffer"], {}),
      ("adapter_config_missing_file", {"adapter_config": missing + ".json"},
       ["--adapter_config=" + missing + ".json", "no such file"], {}),
      ("adapter_config_foreign_field", {"adapter_config": p["adapter_cfg_field"]},
       ["--adapter_config=" + p["adapter_cfg_field"],
        "unknown field(s) of a lora adapter config: rank"], {}),
      ("adapter_config_out_of_range", {"adapter_config": p["adapter_cfg_range"]},
       ["--adapter_config=" + p["adapter_cfg_range"], "r=0"], {}),
      ("adapter_size_for_lora", {"adapter_config": "lora",
                                 "adapter_size": 8},
       ["--adapter_size", "--adapter_config=lora"], {}),
      ("adapter_of_another_method",
       {"adapter_checkpoint": p["adapter_reference"], "adapter_config": "lora",
        "adapter_size": None, "do_eval": True},
       ["--adapter_checkpoint=" + p["adapter_reference"],
        "bottleneck adapters", "lora adapters"], {}),
      # AdapterDrop.
      ("skip_layers_out_of_range", {"skip_layers": "0,2", "do_eval": True},
       ["--skip_layers=0,2", "layer 2 is not one of 0..1", "2 layers"], {}),
      ("skip_layers_not_indices", {"skip_layers": "0,top"},
       ["--skip_layers", "'top'"], {}),
      ("adapter_drop_in_full_mode", {"adapter_drop": True,
                                     "train_mode": "full"},
       ["--adapter_drop", "--train_mode=adapters", "full"], {}),
      ("adapter_drop_layer_attention",
       {"adapter_drop": True, "adapter_config": "layer_attention",
        "adapter_size": None},
       ["--adapter_drop", "--adapter_config=layer_attention",
        "frozen encoder"], {}),
      ("frozen_activations_without_layer_attention",
       {"frozen_activations": True, "adapter_config": "lora",
        "adapter_size": None},
       ["--frozen_activations", "layer_attention", "--adapter_config=lora"],
       {}),
      # Data files.
      ("tsv_wrong_column_count", {"data_dir": p["data_columns"]},
       [os.path.join(p["data_columns"], "train.tsv"), "line 5", "4",
        "expected 5"], {}),
      ("tsv_wrong_column_count_fresh_output_dir",
       {"data_dir": p["data_columns"]},
       [os.path.join(p["data_columns"], "train.tsv"), "line 5"],
       {"fresh": True}),
      ("tsv_bad_label", {"data_dir": p["data_label"], "do_eval": True},
       [os.path.join(p["data_label"], "dev.tsv"), "line 3", "'7'"], {}),
      ("empty_dev_split", {"data_dir": p["data_empty_dev"], "do_eval": True},
       ["dev set is empty", "dev.tsv"], {}),
      ("missing_test_file", {"data_dir": p["data_no_test"],
                             "do_predict": True},
       [os.path.join(p["data_no_test"], "test.tsv"), "not found"], {}),
      ("too_few_examples_for_one_step", {"num_train_epochs": 0.05},
       ["--num_train_epochs=0.05", "64 training examples", "no training step"],
       {}),
      # Output and distribution.
      ("output_dir_under_a_file",
       {"output_dir": os.path.join(p["a_file"], "out")},
       ["--output_dir=" + os.path.join(p["a_file"], "out"),
        p["a_file"] + " is not a directory"], {"output": "custom"}),
      ("output_dir_is_a_file", {"output_dir": p["a_file"]},
       ["--output_dir=" + p["a_file"], "not a directory"],
       {"output": "custom"}),
      ("batch_size_not_divisible_by_replicas",
       {"distribution": "mirrored", "train_batch_size": 7},
       ["--train_batch_size=7", "not divisible", "2 replicas"],
       {"two_devices": True}),
  ]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  return _build_inputs(str(tmp_path_factory.mktemp("bad_input")))


def _case_ids():
  # Ids only (the paths are built by the fixture).
  fake = {k: "/x/" + k for k in (
      "model_dir", "config_malformed", "config_not_utf8", "config_heads",
      "config_dropout", "config_missing_key", "vocab_bigger", "vocab_not_utf8",
      "ckpt_hidden32", "ckpt_corrupt", "ckpt_uncased", "adapter_other_base",
      "ckpt_truncated", "ckpt_string", "ckpt_int32", "adapter_truncated",
      "data_columns", "data_label", "data_empty_dev", "data_no_test",
      "a_file", "adapter_reference", "adapter_cfg_field",
      "adapter_cfg_range")}
  fake["base"] = {"data_dir": "/x/data", "bert_config_file": "/x/c.json"}
  return [case[0] for case in _cases(fake)]


CASE_IDS = _case_ids()


# Caught by the flag checks, before TensorFlow is imported.
FAST_CASES = frozenset([
    "no_do_flag", "learning_rate_zero", "learning_rate_negative",
    "epochs_zero", "epochs_negative", "epochs_infinite", "learning_rate_nan",
    "seed_negative", "seed_too_large", "max_seq_length_below_3",
    "batch_size_zero", "unparseable_int", "unparseable_float",
    "unparseable_bool", "unknown_flag", "unknown_task", "missing_vocab",
    "vocab_is_a_directory", "missing_config", "missing_data_dir",
    "data_dir_is_a_file"])
# Needs TensorFlow but runs as its own process too (see the docstring).
OWN_PROCESS_CASES = frozenset(["tsv_wrong_column_count_fresh_output_dir"])


def _base_flags(base):
  flags = dict(base)
  flags.update(do_train=True, jit_compile=False, bucket_by_length=False)
  return flags


def _prepare_case(case, root):
  """Creates the case's output_dir; returns what running and checking need."""
  case_id, overrides, _, options = case
  case_dir = os.path.join(root["runs"], case_id)
  os.makedirs(case_dir)
  if options.get("output") == "custom":
    output_dir = overrides["output_dir"]
    watched = os.path.dirname(output_dir)
    while not os.path.isdir(watched):
      watched = os.path.dirname(watched)
  elif options.get("fresh"):
    output_dir = os.path.join(case_dir, "fresh", "out")
    watched = case_dir
  else:
    output_dir = os.path.join(case_dir, "out")
    for rel, content in PREPARED.items():
      _write(os.path.join(output_dir, rel), content, "wb")
    watched = output_dir
  flags = dict(_base_flags(root["base"]), output_dir=output_dir)
  flags.update({k: v for k, v in overrides.items() if k != "output_dir"})
  return {"id": case_id, "args": tiny_fixtures.flag_args(flags),
          "output_dir": output_dir, "watched": watched,
          "stdout": os.path.join(root["io"], case_id + ".stdout"),
          "stderr": os.path.join(root["io"], case_id + ".stderr"),
          "two_devices": bool(options.get("two_devices"))}


def _run_process(job):
  if job["two_devices"]:
    cmd = [sys.executable, "-c", _TWO_DEVICE_CLI]
  else:
    cmd = [sys.executable, os.path.join(REPO_ROOT, "run_classifier.py")]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(cmd + job["args"], capture_output=True, text=True,
                        timeout=900, env=env, cwd=REPO_ROOT)
  return {job["id"]: (proc.returncode, proc.stdout, proc.stderr)}


def _run_driver(jobs, work_dir):
  jobs_file = os.path.join(work_dir, "jobs.json")
  codes_file = os.path.join(work_dir, "codes.json")
  with open(jobs_file, "w") as f:
    json.dump(jobs, f)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", _DRIVER, jobs_file, codes_file],
                        capture_output=True, text=True, timeout=900, env=env,
                        cwd=REPO_ROOT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(codes_file) as f:
    codes = json.load(f)
  out = {}
  for job in jobs:
    with open(job["stdout"]) as f:
      stdout = f.read()
    with open(job["stderr"]) as f:
      stderr = f.read()
    out[job["id"]] = (codes[job["id"]], stdout, stderr)
  return out


@pytest.fixture(scope="module")
def results(inputs, request, tmp_path_factory):
  """Runs the selected cases concurrently; {case id: result dict}."""
  selected = {item.callspec.params["case_id"] for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec")
              and "case_id" in item.callspec.params}
  root = {"base": inputs["base"],
          "runs": str(tmp_path_factory.mktemp("bad_input_runs")),
          "io": str(tmp_path_factory.mktemp("bad_input_io"))}
  jobs = [_prepare_case(c, root) for c in _cases(inputs) if c[0] in selected]
  before = {job["id"]: snapshot(job["watched"]) for job in jobs}
  in_driver = [job for job in jobs if job["id"] not in FAST_CASES
               and job["id"] not in OWN_PROCESS_CASES
               and not job["two_devices"]]
  own_process = [job for job in jobs if job["id"] in FAST_CASES
                 or job["id"] in OWN_PROCESS_CASES or job["two_devices"]]
  outputs = {}
  with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
    futures = []
    for i in range(2):
      part = in_driver[i::2]
      if part:
        work_dir = os.path.join(root["io"], "driver_%d" % i)
        os.makedirs(work_dir)
        futures.append(pool.submit(_run_driver, part, work_dir))
    # Slow processes first, then the fast ones.
    own_process.sort(key=lambda job: job["id"] in FAST_CASES)
    futures += [pool.submit(_run_process, job) for job in own_process]
    for future in futures:
      outputs.update(future.result())
  results = {}
  for job in jobs:
    code, stdout, stderr = outputs[job["id"]]
    results[job["id"]] = dict(job, code=code, stdout=stdout, stderr=stderr,
                              before=before[job["id"]],
                              after=snapshot(job["watched"]))
  return results


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input(case_id, inputs, results):
  case = {c[0]: c for c in _cases(inputs)}[case_id]
  _, _, expected, options = case
  r = results[case_id]
  report = "exit %s\nstdout:\n%s\nstderr:\n%s" % (r["code"], r["stdout"],
                                                  r["stderr"][-4000:])
  assert r["code"] == 1, report
  assert "Traceback" not in r["stdout"] + r["stderr"], report
  assert r["stdout"].strip() == "", report
  messages = [line for line in r["stderr"].splitlines()
              if line.strip() and not _LOG_LINE.match(line)]
  assert len(messages) == 1, report
  message = messages[0]
  assert message.startswith("error: "), report
  for part in expected:
    assert part in message, "%r not in %r" % (part, message)
  # TensorFlow's native start-up notes (oneDNN, CUDA probing) are not shown.
  assert not [line for line in r["stderr"].splitlines()
              if tf_startup.is_noise(line)], report
  if case_id in FAST_CASES:
    # Failed before TensorFlow was imported: no log line at all.
    assert r["stderr"].splitlines() == [message], report
  # Nothing written: the prepared folder (or the parent of a fresh path) is
  # unchanged, a fresh output_dir was not created.
  assert r["after"] == r["before"], "%s changed" % r["watched"]
  if options.get("fresh"):
    assert not os.path.exists(r["output_dir"])
    assert not os.path.exists(os.path.dirname(r["output_dir"]))


def test_driver_and_own_process_give_the_same_error(results):
  """The in-process driver changes nothing a user would see."""
  def message(case_id):
    return [line for line in results[case_id]["stderr"].splitlines()
            if line.startswith("error: ")]
  in_driver = message("tsv_wrong_column_count")
  own_process = message("tsv_wrong_column_count_fresh_output_dir")
  assert in_driver and in_driver == own_process


def test_at_least_twenty_cases():
  assert len(CASE_IDS) >= 20
  assert len(set(CASE_IDS)) == len(CASE_IDS)


def test_verbose_shows_the_traceback(inputs, tmp_path):
  """--verbose is for bug reports: the same error with its traceback."""
  flags = dict(_base_flags(inputs["base"]), output_dir=str(tmp_path / "out"),
               task_name="MRPX", verbose=True)
  proc = tiny_fixtures.run_cli(flags)
  assert proc.returncode != 0
  assert "Traceback" in proc.stderr
  assert "unknown --task_name=MRPX" in proc.stderr
  assert not os.path.exists(str(tmp_path / "out"))
