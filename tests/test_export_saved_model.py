"""The serving SavedModel: raw text in, the model's probabilities out.

The reference is the original pipeline in plain Python: FullTokenizer,
google-research/bert's truncation loop and packing, then a BertClassifier
holding the same weights. The SavedModel is loaded in a fresh process.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert.model import adapter_io
from adapter_bert import adapters
from adapter_bert.storage import checkpoint_io
from adapter_bert.data import glue_processors
from adapter_bert.model import modeling
from adapter_bert.model import multitask
from adapter_bert.training import run_config
from adapter_bert.text import tokenization
from adapter_bert.errors import UserError
import tiny_fixtures
from test_modeling import randomize, tiny_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "scripts", "export_saved_model.py")
MAX_SEQ_LENGTH = 16

_WORDS = ("the a cat dog sat on mat run play is was it he she big small house "
          "un ##believ ##able ##s ##ing ##ed cafe 中 文 hello world . , ! ? "
          "\" ' ( ) - : ;").split()
_LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + _WORDS + _LETTERS
         + ["##" + c for c in _LETTERS])

PAIRS = [
    ("The cat sat on the mat.", "The dog sat on the mat!"),
    ("Hello, World", "unbelievable"),
    ("A big house, a small house, a big big house and the cat is running "
     "in it", "She was playing"),
    ("He runs", "the dog is playing with the cat on the mat in the big house "
     "all day long"),
    ("Café 中文 ÉTÉ", "naïve (sat) - it: is; ok?"),
    ("x", "\u00ad\u200b"),  # b tokenizes to nothing: a single sentence.
]
SINGLES = ["The cat sat.", "UNBELIEVABLE houses!!", "",
           "a b c d e f g h i j k l m n o p q r s t u v w x y z",
           "Café is big"]


def load_script():
  """The command line behind scripts/export_saved_model.py (its flags and
  main, with the library's names: adapter_bert.cli.export)."""
  return importlib.import_module("adapter_bert.cli.export")


def reference_features(pairs, tokenizer, max_seq_length):
  """google-research/bert's convert_single_example, in plain Python."""
  rows = []
  for text_a, text_b in pairs:
    tokens_a = tokenizer.tokenize(text_a)
    tokens_b = tokenizer.tokenize(text_b) if text_b else None
    if tokens_b:
      while len(tokens_a) + len(tokens_b) > max_seq_length - 3:
        if len(tokens_a) > len(tokens_b):
          tokens_a.pop()
        else:
          tokens_b.pop()
    else:
      tokens_a = tokens_a[:max_seq_length - 2]
    tokens = ["[CLS]"] + tokens_a + ["[SEP]"]
    segments = [0] * len(tokens)
    if tokens_b:
      tokens += tokens_b + ["[SEP]"]
      segments += [1] * (len(tokens_b) + 1)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    pad = max_seq_length - len(ids)
    rows.append((ids + [0] * pad, [1] * len(ids) + [0] * pad,
                 segments + [0] * pad))
  return {name: np.array([r[i] for r in rows], np.int32)
          for i, name in enumerate(("input_ids", "input_mask", "segment_ids"))}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("export")
  vocab_file = str(tmp / "vocab.txt")
  with open(vocab_file, "w", encoding="utf-8") as f:
    f.write("\n".join(VOCAB) + "\n")
  config = tiny_config(vocab_size=len(VOCAB))
  config_file = str(tmp / "bert_config.json")
  with open(config_file, "w", encoding="utf-8") as f:
    f.write(config.to_json_string())
  pretrained = modeling.BertClassifier(config, 2)
  randomize(pretrained, seed=1)
  base = str(tmp / "base" / "bert_model.ckpt")
  checkpoint_io.save_checkpoint(base, checkpoint_io.base_tensors(pretrained))
  models, dirs = {}, {}
  for seed, task in enumerate(("mrpc", "sst-2", "sts-b")):
    processor = glue_processors.get_processor(task)
    model = modeling.BertClassifier(config, processor.num_labels,
                                    adapters.AdapterConfig(size=4))
    checkpoint_io.load_checkpoint(model, base)
    trainable = modeling.set_train_mode(model, "adapters")
    rng = np.random.default_rng(seed + 20)
    for name, variable in trainable:
      value = rng.normal(0.0, 0.5, variable.shape) + name.endswith("gamma")
      variable.assign(value.astype(np.float32))
    cfg = run_config.RunConfig(task_name=task, output_dir="unused",
                               bert_config_file=config_file,
                               vocab_file=vocab_file,
                               max_seq_length=MAX_SEQ_LENGTH)
    dirs[processor.name] = adapter_io.save_adapter(
        model, trainable, str(tmp / task), model.adapter_config, cfg, config,
        processor, base)
    models[processor.name] = model
  tokenizer = tokenization.FullTokenizer(vocab_file, do_lower_case=True)
  return dict(tmp=tmp, vocab_file=vocab_file, config=config,
              config_file=config_file, base=base, models=models, dirs=dirs,
              tokenizer=tokenizer)


LOADER = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops)
result = {}
for path, request in json.loads(sys.argv[1]):
  loaded = tf.saved_model.load(path)
  outputs = {}
  for name, (text_a, text_b) in request.items():
    out = loaded.signatures[name](text_a=tf.constant(text_a, tf.string),
                                  text_b=tf.constant(text_b, tf.string))
    outputs[name] = {k: [x.decode() if isinstance(x, bytes) else x
                         for x in v.numpy().tolist()] for k, v in out.items()}
  outputs["_signatures"] = sorted(loaded.signatures)
  outputs["_inputs"] = sorted(
      loaded.signatures["serving_default"].structured_input_signature[1])
  result[path] = outputs
print(json.dumps(result))
"""


def run_quietly(command):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
  return subprocess.run(command, capture_output=True, text=True, env=env,
                        timeout=600, check=False)


def probabilities(model, features):
  logits = model(features).numpy()
  if model.num_labels == 1:
    return logits[:, 0]
  return tf.nn.softmax(logits).numpy()


TEXTS_A = [a for a, _ in PAIRS] + SINGLES
TEXTS_B = [b for _, b in PAIRS] + [""] * len(SINGLES)


@pytest.fixture(scope="module")
def script():
  yield load_script()
  # Its flags (--do_lower_case, ...) go with this file's tests.
  tiny_fixtures.forget_flags_of("adapter_bert.cli.export")


def export_with_flags(script, flags):
  """Runs the script's main() with these command-line flags."""
  script.FLAGS.unparse_flags()
  script.FLAGS(["export_saved_model.py"] + flags)
  script.main(["export_saved_model.py"])


@pytest.fixture(scope="module")
def exported(setup, script):
  """Two exports by the script's main(), then one fresh process that loads
  both SavedModels and predicts from raw strings.

  multi: three adapters on one base (one named on the command line).
  single: MRPC from a run_classifier output_dir in the reference layout.
  """
  tmp = setup["tmp"]
  multi = str(tmp / "serving" / "glue" / "1")
  export_with_flags(script, [
      "--vocab_file=" + setup["vocab_file"],
      "--bert_config_file=" + setup["config_file"],
      "--init_checkpoint=" + setup["base"],
      "--adapter_dir=" + setup["dirs"]["MRPC"],
      "--adapter_dir=" + setup["dirs"]["SST-2"],
      "--adapter_dir=sts=" + setup["dirs"]["STS-B"],
      "--export_dir=" + multi])

  run_dir = tmp / "run"
  adapter_io.export_reference_checkpoint(
      setup["models"]["MRPC"], str(run_dir / "model.ckpt-9"), global_step=9)
  (run_dir / "run_config.json").write_text(json.dumps({"flags": {
      "task_name": "MRPC", "max_seq_length": MAX_SEQ_LENGTH,
      "do_lower_case": True}}))
  single = str(tmp / "serving" / "mrpc" / "1")
  export_with_flags(script, [
      "--vocab_file=" + setup["vocab_file"],
      "--bert_config_file=" + setup["config_file"],
      "--checkpoint=" + str(run_dir), "--export_dir=" + single])

  request = [
      (multi, {"serving_default": (TEXTS_A, TEXTS_B),
               "mrpc": ([a for a, _ in PAIRS], [b for _, b in PAIRS]),
               "sst_2": (SINGLES, [""] * len(SINGLES))}),
      (single, {"serving_default": ([a for a, _ in PAIRS],
                                    [b for _, b in PAIRS])}),
  ]
  done = run_quietly([sys.executable, "-c", LOADER, json.dumps(request)])
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  return dict(multi=multi, single=single, multi_out=result[multi],
              single_out=result[single])


def test_multitask_export_equals_the_models(setup, exported):
  result = exported["multi_out"]
  assert result["_signatures"] == ["mrpc", "serving_default", "sst_2", "sts"]
  assert result["_inputs"] == ["text_a", "text_b"]
  with open(os.path.join(exported["multi"], "assets", "vocab.txt"),
            encoding="utf-8") as f:
    assert f.read().split("\n")[:-1] == VOCAB

  features = reference_features(list(zip(TEXTS_A, TEXTS_B)),
                                setup["tokenizer"], MAX_SEQ_LENGTH)
  # The pair that truncates and the long single sentence fill the length.
  assert features["input_mask"].sum(axis=1).max() == MAX_SEQ_LENGTH
  everything = result["serving_default"]
  assert sorted(everything) == [
      "mrpc_label", "mrpc_logits", "mrpc_probabilities", "sst_2_label",
      "sst_2_logits", "sst_2_probabilities", "sts_score"]
  for key, name in (("mrpc", "MRPC"), ("sst_2", "SST-2")):
    expected = probabilities(setup["models"][name], features)
    np.testing.assert_allclose(everything[key + "_probabilities"], expected,
                               rtol=0, atol=1e-5)
    assert everything[key + "_label"] == [str(i) for i in expected.argmax(-1)]
  np.testing.assert_allclose(everything["sts_score"],
                             probabilities(setup["models"]["STS-B"], features),
                             rtol=0, atol=1e-5)
  # The per-task signatures give the same numbers on their own inputs.
  n = len(PAIRS)
  np.testing.assert_allclose(result["mrpc"]["probabilities"],
                             everything["mrpc_probabilities"][:n], atol=1e-5)
  np.testing.assert_allclose(result["sst_2"]["probabilities"],
                             everything["sst_2_probabilities"][n:], atol=1e-5)


def test_export_from_a_training_checkpoint(setup, exported, script):
  result = exported["single_out"]
  assert result["_signatures"] == ["mrpc", "serving_default"]
  out = result["serving_default"]
  assert sorted(out) == ["label", "logits", "probabilities"]
  features = reference_features(PAIRS, setup["tokenizer"], MAX_SEQ_LENGTH)
  np.testing.assert_allclose(out["probabilities"],
                             probabilities(setup["models"]["MRPC"], features),
                             rtol=0, atol=1e-5)
  # An existing export is never overwritten by accident.
  with pytest.raises(UserError, match="already exists"):
    script.main(["export_saved_model.py"])


def test_in_graph_features_equal_the_reference(setup, script):
  mt = multitask.MultiTaskModel(setup["config"])
  module = script.ServingModule(mt, setup["vocab_file"], True, MAX_SEQ_LENGTH)
  pairs = PAIRS + [(s, "") for s in SINGLES]
  got = module.features(tf.constant([a for a, _ in pairs]),
                        tf.constant([b for _, b in pairs]))
  expected = reference_features(pairs, setup["tokenizer"], MAX_SEQ_LENGTH)
  width = got["input_ids"].shape[1]
  for name, value in expected.items():
    np.testing.assert_array_equal(got[name].numpy(), value[:, :width])
    assert not value[:, width:].any()


@pytest.mark.parametrize("flags,message", [
    (["--adapter_dir={tmp}/missing"], "--adapter_dir={tmp}/missing: directory "
     "not found"),
    ([], "give either --adapter_dir (one or more) or --checkpoint"),
    (["--adapter_dir={mrpc}", "--checkpoint={tmp}"],
     "give either --adapter_dir (one or more) or --checkpoint"),
    (["--adapter_dir={mrpc}", "--init_checkpoint={tmp}/other"],
     "--init_checkpoint={tmp}/other: no checkpoint there"),
    (["--adapter_dir={mrpc}", "--do_lower_case=false"],
     "--do_lower_case=False but the task was trained with do_lower_case=True"),
])
def test_errors_are_one_line(setup, script, tmp_path, flags, message):
  values = dict(tmp=tmp_path, mrpc=setup["dirs"]["MRPC"])
  argv = ["export_saved_model.py", "--vocab_file=" + setup["vocab_file"],
          "--bert_config_file=" + setup["config_file"],
          "--init_checkpoint=" + setup["base"],
          "--export_dir=%s/out" % tmp_path]
  script.FLAGS.unparse_flags()
  script.FLAGS(argv + [f.format(**values) for f in flags])
  with pytest.raises(UserError) as e:
    script.main(["export_saved_model.py"])
  assert message.format(**values) in str(e.value)
  assert not os.path.exists(tmp_path / "out")


def test_text_settings_come_from_the_tasks_unless_given(script):
  mrpc = {"do_lower_case": True, "max_seq_length": 128}
  rte = {"do_lower_case": True, "max_seq_length": 64}
  assert script.resolve_text_settings([mrpc]) == (True, 128)
  assert script.resolve_text_settings([{}]) == (True, 128)
  assert script.resolve_text_settings([mrpc, rte], None, 96) == (True, 96)
  with pytest.raises(UserError, match="different max_seq_length .*give "
                     "--max_seq_length"):
    script.resolve_text_settings([mrpc, rte])
  with pytest.raises(UserError, match="--do_lower_case=False but"):
    script.resolve_text_settings([mrpc], False)
  cased = {"do_lower_case": False, "max_seq_length": 128}
  with pytest.raises(UserError, match="different do_lower_case"):
    script.resolve_text_settings([mrpc, cased])


def test_tflite_model_equals_the_model(setup, script, tmp_path):
  # --tflite: the one task's classifier from token ids, as LiteRT runs it.
  out = str(tmp_path / "mrpc" / "1")
  export_with_flags(script, [
      "--vocab_file=" + setup["vocab_file"],
      "--bert_config_file=" + setup["config_file"],
      "--init_checkpoint=" + setup["base"],
      "--adapter_dir=" + setup["dirs"]["MRPC"], "--export_dir=" + out,
      "--tflite"])
  features = reference_features(PAIRS, setup["tokenizer"], MAX_SEQ_LENGTH)
  interpreter = tf.lite.Interpreter(model_path=os.path.join(out,
                                                            "model.tflite"))
  runner = interpreter.get_signature_runner()
  got = runner(**{k: features[k].astype(np.int32)
                  for k in ("input_ids", "input_mask", "segment_ids")})
  want = probabilities(setup["models"]["MRPC"], features)
  np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
  assert (got["probabilities"].argmax(-1) == want.argmax(-1)).all()
  with pytest.raises(UserError, match="--tflite exports one task"):
    export_with_flags(script, [
        "--vocab_file=" + setup["vocab_file"],
        "--bert_config_file=" + setup["config_file"],
        "--init_checkpoint=" + setup["base"],
        "--adapter_dir=" + setup["dirs"]["MRPC"],
        "--adapter_dir=" + setup["dirs"]["SST-2"],
        "--export_dir=" + str(tmp_path / "two"), "--tflite"])
