"""Tiny BERT fixtures for end-to-end tests: vocab, config, checkpoint, data.

Everything is written under a test's tmp_path: a 2-layer hidden-16 BERT with
random weights saved as a Google-style checkpoint (base variables only), a
WordPiece vocabulary, and MRPC-layout TSV files whose label is learnable
(paraphrase = the two sentences share their first word).
"""

import json
import os
import subprocess
import sys

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "big", "small", "red",
         "blue", "ran", "to", "house", "car", "tree", "bird", "fish", "sun",
         "moon", "green", "fast", "slow", "happy", "sad", "old", "new"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PIECES = ["##s", "##ed", "##ing", ".", ",", "!", "?"]


def write_vocab(directory):
  path = os.path.join(directory, "vocab.txt")
  tokens = SPECIAL + WORDS + PIECES
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(tokens) + "\n")
  return path, len(tokens)


def tiny_bert_config(vocab_size, **overrides):
  config = dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=32, hidden_act="gelu",
                hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                max_position_embeddings=64, type_vocab_size=2,
                initializer_range=0.02)
  config.update(overrides)
  return config


def tiny_classifier(dropout=0.1, num_layers=2):
  """In process: a BertClassifier (vocab 40, hidden 16, 2 heads, 2 labels)
  with adapters of size 4 and `dropout` everywhere, the classifier too."""
  from adapter_bert import adapters  # pylint: disable=g-import-not-at-top
  from adapter_bert.model import modeling  # pylint: disable=g-import-not-at-top
  config = modeling.BertConfig(
      vocab_size=40, hidden_size=16, num_hidden_layers=num_layers,
      num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
      type_vocab_size=2, hidden_dropout_prob=dropout,
      attention_probs_dropout_prob=dropout)
  return modeling.BertClassifier(config, 2, adapters.AdapterConfig(size=4),
                                 classifier_dropout=dropout)


def tiny_trainer(model, train_mode="adapters", seed=0, jit_compile=True,
                 micro_batch_size=None):
  """Random weights for `model` (gammas near 1) and a Trainer of it.

  Global batch 8, 6 steps of learning rate 5e-2 (1 warm-up), dropout seed 3,
  output directory /tmp (tests that save set trainer.output_dir).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from adapter_bert.storage import checkpoint_io  # pylint: disable=g-import-not-at-top
  from adapter_bert.model import modeling  # pylint: disable=g-import-not-at-top
  from adapter_bert.compute import optimization  # pylint: disable=g-import-not-at-top
  from adapter_bert.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  for name, v in checkpoint_io.checkpoint_name_map(model).items():
    v.assign((rng.normal(0, 0.2, size=v.shape)
              + (1.0 if name.endswith("gamma") else 0.0)).astype(np.float32))
  trainable = modeling.set_train_mode(model, train_mode)
  optimizer = optimization.create_optimizer(5e-2, 6, 1)
  return trainer_lib.Trainer(
      model, optimizer, trainable, tf.distribute.get_strategy(), "/tmp",
      num_labels=2, is_regression=False, global_batch_size=8, seed=3,
      jit_compile=jit_compile, micro_batch_size=micro_batch_size)


def write_model(directory, seed=0, **config_overrides):
  """Writes vocab.txt, bert_config.json and bert_model.ckpt.* in `directory`.

  Returns:
    dict with vocab_file, bert_config_file, init_checkpoint.
  """
  from adapter_bert.storage import checkpoint_io  # pylint: disable=g-import-not-at-top
  from adapter_bert.model import modeling  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  vocab_file, vocab_size = write_vocab(directory)
  config = tiny_bert_config(vocab_size, **config_overrides)
  config_file = os.path.join(directory, "bert_config.json")
  with open(config_file, "w") as f:
    json.dump(config, f, indent=2)
  model = modeling.BertClassifier(modeling.BertConfig(**config), 2)
  rng = np.random.default_rng(seed)
  tensors = {}
  base = set(checkpoint_io.base_names(model))
  for name, variable in checkpoint_io.checkpoint_name_map(model).items():
    if name not in base:
      continue
    value = rng.normal(0.0, 0.2, size=variable.shape).astype(np.float32)
    if name.endswith("gamma"):
      value += 1.0
    tensors[name] = value
  prefix = os.path.join(directory, "bert_model.ckpt")
  checkpoint_io.save_checkpoint(prefix, tensors)
  return {"vocab_file": vocab_file, "bert_config_file": config_file,
          "init_checkpoint": prefix}


def _sentence(rng, first=None):
  n = int(rng.integers(3, 9))
  words = list(rng.choice(WORDS, size=n))
  if first is not None:
    words[0] = first
  return " ".join(words) + "."


def write_mrpc(directory, num_train=64, num_dev=20, num_test=12, seed=0):
  """MRPC-layout train/dev/test.tsv (header, 5 columns; test has index)."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"

  def rows(n, offset):
    out = []
    for i in range(n):
      a = _sentence(rng)
      label = int(rng.integers(0, 2))
      first = a.split()[0] if label else None
      b = _sentence(rng, first=first)
      if not label and b.split()[0] == a.split()[0]:
        label = 1
      out.append((label, offset + 2 * i, offset + 2 * i + 1, a, b))
    return out

  for split, n, offset in (("train", num_train, 1000), ("dev", num_dev, 5000)):
    with open(os.path.join(directory, split + ".tsv"), "w", encoding="utf-8") as f:
      f.write(header)
      for label, id1, id2, a, b in rows(n, offset):
        f.write("%d\t%d\t%d\t%s\t%s\n" % (label, id1, id2, a, b))
  with open(os.path.join(directory, "test.tsv"), "w", encoding="utf-8") as f:
    f.write("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
    for i, (_, id1, id2, a, b) in enumerate(rows(num_test, 9000)):
      f.write("%d\t%d\t%d\t%s\t%s\n" % (i, id1, id2, a, b))
  return directory


def make_job(tmp_path, **model_overrides):
  """Model files and MRPC data under tmp_path; returns the base flags."""
  files = write_model(os.path.join(str(tmp_path), "model"), **model_overrides)
  data_dir = write_mrpc(os.path.join(str(tmp_path), "MRPC"))
  return {
      "task_name": "MRPC", "data_dir": data_dir,
      "vocab_file": files["vocab_file"],
      "bert_config_file": files["bert_config_file"],
      "init_checkpoint": files["init_checkpoint"],
      "output_dir": os.path.join(str(tmp_path), "out"),
      "max_seq_length": 24, "train_batch_size": 8, "eval_batch_size": 8,
      "predict_batch_size": 8, "learning_rate": 1e-2, "num_train_epochs": 2,
      "adapter_size": 4, "save_checkpoints_steps": 4, "log_steps": 2,
      "do_lower_case": True,
  }


def flag_args(flags):
  """--key=value for each flag; a value None leaves the flag out."""
  args = []
  for key, value in flags.items():
    if value is None:
      continue
    if isinstance(value, bool):
      value = "true" if value else "false"
    args.append("--%s=%s" % (key, value))
  return args


def run_cli(flags, timeout=600, env=None, extra_args=(),
            script="run_classifier.py"):
  """Runs run_classifier.py (or `script`) in a subprocess; returns
  CompletedProcess."""
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  full_env.update(env or {})
  cmd = [sys.executable, os.path.join(REPO_ROOT, script)]
  cmd += flag_args(flags) + list(extra_args)
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                        env=full_env, cwd=REPO_ROOT)


def read_eval_results(output_dir, name="eval_results.txt"):
  results = {}
  with open(os.path.join(output_dir, name)) as f:
    for line in f:
      key, value = line.strip().split(" = ")
      results[key] = float(value)
  return results


def assert_same_training(plain, stored):
  """Two (losses, {name: trained value}) of the same steps agree: losses
  and values within 1e-5, key biases within 1e-4 (a key bias adds the same
  q·b to every score of a query: its gradient is zero but for rounding,
  which Adam scales up to ~lr·g/epsilon)."""
  (plain_losses, plain_values), (stored_losses, stored_values) = plain, stored
  np.testing.assert_allclose(stored_losses, plain_losses, atol=1e-5)
  for name, value in plain_values.items():
    tolerance = 1e-4 if name.endswith("key/bias") else 1e-5
    np.testing.assert_allclose(stored_values[name], value, atol=tolerance,
                               err_msg=name)


def forget_flags_of(module_name):
  """Removes the absl flags that module `module_name` defined, and the
  module itself, so that another command line defining flags of the same
  names (scripts/adapter_fusion_glue.py and the export's both define
  --do_lower_case) can be imported later in the same test process."""
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  for flag in list(flags.FLAGS.flags_by_module_dict().get(module_name, [])):
    if flag.name in flags.FLAGS:
      delattr(flags.FLAGS, flag.name)
  sys.modules.pop(module_name, None)
