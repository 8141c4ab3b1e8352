"""Adapter directories, base fingerprints, the reference checkpoint layout."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert.model import adapter_io
from adapter_bert import adapters
from adapter_bert.storage import checkpoint_io
from adapter_bert.data import glue_processors
from adapter_bert.model import modeling
from adapter_bert.compute import optimization
from adapter_bert.training import run_config
from adapter_bert.training import trainer as trainer_lib
from adapter_bert.errors import UserError
from test_modeling import randomize, tiny_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_model(num_labels=2, adapter_size=4, config=None):
  return modeling.BertClassifier(config or tiny_config(), num_labels,
                                 adapters.AdapterConfig(size=adapter_size))


def make_run_config(task="mrpc", train_mode="adapters", max_seq_length=16):
  return run_config.RunConfig(task_name=task, output_dir="unused",
                              bert_config_file="unused", vocab_file="unused",
                              max_seq_length=max_seq_length,
                              train_mode=train_mode)


def reference_trains(name, train_mode):
  """google-research/adapter-bert's choice of trained variables, by name."""
  head = name in ("output_weights", "output_bias")
  if train_mode == "full":
    return True
  if train_mode == "head":
    return head
  return head or "/adapters/" in name or "LayerNorm" in name


def save_base(model, prefix):
  """Writes only the base BERT variables (a pre-trained checkpoint)."""
  checkpoint_io.save_checkpoint(prefix, checkpoint_io.base_tensors(model))
  return prefix


def random_features(batch=4, seq=10, vocab=50, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, seq + 1, batch)
  mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
  return {
      "input_ids": (rng.integers(1, vocab, (batch, seq))
                    * mask).astype(np.int32),
      "input_mask": mask,
      "segment_ids": ((np.arange(seq)[None, :] >= lengths[:, None] // 2)
                      * mask).astype(np.int32),
  }


def values(model):
  return {n: v.numpy()
          for n, v in checkpoint_io.checkpoint_name_map(model).items()}


def checkpoint_names(prefix):
  return set(tf.train.load_checkpoint(prefix).get_variable_to_shape_map())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A base checkpoint and a model trained 3 steps on it by the Trainer.

  Shared by the tests of this module, which must not change it.
  """
  tmp_path = tmp_path_factory.mktemp("trained")
  config = tiny_config()
  pretrained = make_model(config=config)
  randomize(pretrained, seed=1)
  base = save_base(pretrained, str(tmp_path / "base" / "bert_model.ckpt"))

  model = make_model(config=config)
  checkpoint_io.load_checkpoint(model, base)
  before = values(model)
  trainable = modeling.set_train_mode(model, "adapters")
  optimizer = optimization.create_optimizer(1e-2, 3, 0)
  output_dir = str(tmp_path / "run")
  trainer = trainer_lib.Trainer(
      model, optimizer, trainable, tf.distribute.get_strategy(), output_dir,
      num_labels=2, is_regression=False, global_batch_size=4, seed=3,
      jit_compile=False)
  features = random_features(seed=5)
  features["label_ids"] = np.array([0, 1, 1, 0], np.int32)

  def make_dataset(start_step):
    del start_step
    return tf.data.Dataset.from_tensors(features).repeat()

  trainer.train(make_dataset, 3, iterations_per_loop=3,
                save_checkpoints_steps=3)
  adapter_dir = str(tmp_path / "run" / "adapter")
  # The runner's call.
  adapter_io.save_adapter(model, trainable, adapter_dir,
                          adapter_config=model.adapter_config,
                          run_config=make_run_config(), bert_config=config,
                          processor=glue_processors.get_processor("mrpc"),
                          init_checkpoint=base)
  return dict(config=config, base=base, model=model, trainable=trainable,
              before=before, output_dir=output_dir, adapter_dir=adapter_dir)


def test_adapter_directory_holds_only_the_trained_variables(trained):
  directory = trained["adapter_dir"]
  assert sorted(os.listdir(directory)) == sorted([
      "adapter.ckpt.data-00000-of-00001", "adapter.ckpt.index",
      "adapter_config.json", "adapter_metadata.json"])
  trained_names = {n for n, _ in trained["trainable"]}
  assert (checkpoint_names(os.path.join(directory, "adapter.ckpt"))
          == trained_names)
  for name in trained_names:
    assert ("/adapters/" in name or "LayerNorm" in name
            or name in ("output_weights", "output_bias"))
  # Training moved the trained variables and left the base alone.
  after = values(trained["model"])
  assert all(np.array_equal(after[n], trained["before"][n])
             for n in after if n not in trained_names)
  assert any(not np.array_equal(after[n], trained["before"][n])
             for n in trained_names)
  with open(os.path.join(directory, "adapter_metadata.json")) as f:
    metadata = json.load(f)
  assert metadata["task_name"] == "MRPC"
  assert metadata["label_list"] == ["0", "1"]
  assert metadata["is_regression"] is False
  assert metadata["max_seq_length"] == 16
  assert metadata["do_lower_case"] is True
  assert metadata["train_mode"] == "adapters"
  assert metadata["bert_config"] == trained["config"].to_dict()
  assert metadata["base_fingerprint"] == adapter_io.base_fingerprint(
      trained["model"], exclude=trained_names)[0]
  assert (metadata["base_fingerprint_variables"]
          == len(after) - len(trained_names))
  assert adapters.AdapterConfig.from_json_file(
      os.path.join(directory, "adapter_config.json")
  ) == adapters.AdapterConfig(size=4)
  # As readable as a plain mkdir/open would make them (not mkdtemp's 0700).
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(directory).st_mode & 0o777 == 0o777 & ~umask
  for name in os.listdir(directory):
    assert (os.stat(os.path.join(directory, name)).st_mode & 0o777
            == 0o666 & ~umask)
  # Written atomically: no temporary directory is left beside it.
  assert sorted(os.listdir(trained["output_dir"])) == sorted(
      f for f in os.listdir(trained["output_dir"]) if not f.startswith("."))


def test_base_plus_adapter_equals_the_full_training_checkpoint(trained):
  features = random_features(seed=9)
  full = make_model(config=trained["config"])
  checkpoint_io.load_checkpoint(full, trained["output_dir"])  # model.ckpt-3
  latest = tf.train.latest_checkpoint(trained["output_dir"])
  assert latest.endswith("model.ckpt-3")

  small = make_model(config=trained["config"])
  checkpoint_io.load_checkpoint(small, trained["base"])
  metadata = adapter_io.load_adapter(small, trained["adapter_dir"],
                                     init_checkpoint=trained["base"])
  assert metadata["task_name"] == "MRPC"
  full_values, small_values = values(full), values(small)
  assert all(np.array_equal(full_values[n], small_values[n])
             for n in full_values)
  np.testing.assert_array_equal(small(features).numpy(), full(features).numpy())
  np.testing.assert_array_equal(small(features).numpy(),
                                trained["model"](features).numpy())


def test_a_second_save_replaces_the_directory(trained, tmp_path):
  directory = str(tmp_path / "adapter")
  shutil.copytree(trained["adapter_dir"], directory)
  model = make_model(config=trained["config"])
  checkpoint_io.load_checkpoint(model, trained["output_dir"])
  trainable = modeling.set_train_mode(model, "adapters")
  head = model.classifier.output_bias
  head.assign(head + 1.0)
  adapter_io.save_adapter(model, trainable, directory, model.adapter_config,
                          make_run_config(), trained["config"],
                          glue_processors.get_processor("mrpc"),
                          trained["base"])
  reader = tf.train.load_checkpoint(os.path.join(directory, "adapter.ckpt"))
  np.testing.assert_array_equal(reader.get_tensor("output_bias"), head.numpy())
  assert os.listdir(tmp_path) == ["adapter"]


def test_another_base_is_refused_with_both_fingerprints(trained):
  model = make_model(config=trained["config"])
  checkpoint_io.load_checkpoint(model, trained["base"])
  query = model.bert.blocks[0].attention.query.kernel
  query.assign(query + 1e-3)  # A slightly different base.
  before = values(model)
  with pytest.raises(UserError) as e:
    adapter_io.load_adapter(model, trained["adapter_dir"])
  message = str(e.value)
  assert message.startswith("--adapter_checkpoint=%s was trained on another "
                            "base model (fingerprint " % trained["adapter_dir"])
  metadata = json.load(open(os.path.join(trained["adapter_dir"],
                                         "adapter_metadata.json")))
  mine = adapter_io.base_fingerprint(
      model, exclude=[n for n, _ in trained["trainable"]])[0]
  assert "fingerprint %s, this base %s)" % (
      metadata["base_fingerprint"][:16], mine[:16]) in message
  assert "\n" not in message
  # Nothing was assigned.
  assert all(np.array_equal(v, before[n]) for n, v in values(model).items())

  # A fresh random base (no --init_checkpoint) is refused too.
  with pytest.raises(UserError, match="trained on another base model"):
    adapter_io.load_adapter(make_model(config=trained["config"]),
                            trained["adapter_dir"])


def test_incompatible_models_and_broken_directories(trained, tmp_path):
  directory = trained["adapter_dir"]
  with pytest.raises(UserError, match="another BERT config.*hidden_size"):
    adapter_io.load_adapter(make_model(config=tiny_config(hidden_size=32)),
                            directory)
  with pytest.raises(UserError,
                     match="adapters of another configuration.*size"):
    adapter_io.load_adapter(make_model(adapter_size=8,
                                       config=trained["config"]), directory)
  with pytest.raises(UserError, match="head with 2 outputs"):
    adapter_io.load_adapter(make_model(num_labels=3, config=trained["config"]),
                            directory)
  model = make_model(config=trained["config"])
  checkpoint_io.load_checkpoint(model, trained["base"])
  with pytest.raises(UserError, match="labels"):
    adapter_io.load_adapter(model, directory,
                            label_list=["entailment", "not_entailment"])
  with pytest.raises(UserError, match="directory not found"):
    adapter_io.load_adapter(model, str(tmp_path / "nowhere"))
  with pytest.raises(UserError, match="not an adapter directory"):
    adapter_io.load_adapter(model, trained["output_dir"])


def test_full_training_writes_no_adapter_directory(tmp_path):
  model = make_model()
  trainable = modeling.set_train_mode(model, "full")
  result = adapter_io.save_adapter(
      model, trainable, str(tmp_path / "adapter"), model.adapter_config,
      make_run_config(train_mode="full"), model.config,
      glue_processors.get_processor("mrpc"), None)
  assert result is None and not os.path.exists(tmp_path / "adapter")


def test_head_mode_keeps_its_untrained_adapters(tmp_path):
  model = make_model()
  randomize(model, seed=2)
  trainable = modeling.set_train_mode(model, "head")
  adapter_io.save_adapter(model, trainable, str(tmp_path / "adapter"),
                          model.adapter_config,
                          make_run_config(train_mode="head"), model.config,
                          glue_processors.get_processor("mrpc"), None)
  names = checkpoint_names(str(tmp_path / "adapter" / "adapter.ckpt"))
  assert "output_weights" in names
  assert "bert/encoder/layer_0/output/adapters/weights1" in names
  assert not any("LayerNorm" in n for n in names)


def test_bert_base_adapter_is_under_2_5_percent_of_the_base(tmp_path):
  config = modeling.BertConfig.from_json_file(
      os.path.join(REPO_ROOT, "configs", "bert", "bert_base_uncased.json"))
  model = modeling.BertClassifier(config, 2, adapters.AdapterConfig(size=64))
  trainable = modeling.set_train_mode(model, "adapters")
  base_dir = tmp_path / "base"
  save_base(model, str(base_dir / "bert_model.ckpt"))
  directory = adapter_io.save_adapter(
      model, trainable, str(tmp_path / "adapter"), model.adapter_config,
      make_run_config(max_seq_length=128), config,
      glue_processors.get_processor("mrpc"), str(base_dir / "bert_model.ckpt"))
  adapter_bytes = adapter_io.directory_bytes(directory)
  base_bytes = adapter_io.directory_bytes(str(base_dir))
  assert base_bytes > 400e6  # ~110M float32 parameters.
  assert adapter_bytes <= 0.025 * base_bytes, (adapter_bytes, base_bytes)


# --- The reference toolkit's layout. ------------------------------------------


def write_with_tf1_saver(model, prefix, global_step, train_mode="adapters"):
  """Writes `model` as a TF1 graph-mode Saver in adapter-bert would.

  Variables by their original names, Adam slots `<name>/adam_m|adam_v` for
  the trainable ones, and an int64 `global_step`.
  """
  arrays = values(model)
  rng = np.random.default_rng(4)
  graph = tf.Graph()
  with graph.as_default():
    variables = []
    for name, value in arrays.items():
      variables.append(tf.compat.v1.get_variable(
          name, initializer=tf.constant(value), use_resource=False))
      if reference_trains(name, train_mode):
        for slot in ("adam_m", "adam_v"):
          variables.append(tf.compat.v1.get_variable(
              name + "/" + slot, trainable=False, use_resource=False,
              initializer=tf.constant(
                  rng.normal(size=value.shape).astype(np.float32))))
    step = tf.compat.v1.train.get_or_create_global_step()
    variables.append(step)
    assign = step.assign(global_step)
    saver = tf.compat.v1.train.Saver(variables)
    with tf.compat.v1.Session(graph=graph) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      session.run(assign)
      saver.save(session, prefix)
  return prefix


class _Records(logging.Handler):

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.records = []

  def emit(self, record):
    self.records.append(record)


def test_reference_checkpoint_loads_silently_and_predicts_the_same(tmp_path):
  source = make_model(num_labels=3)
  randomize(source, seed=6)
  prefix = write_with_tf1_saver(source, str(tmp_path / "ref" / "model.ckpt-70"),
                                global_step=70)
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  assert reader.get_variable_to_dtype_map()["global_step"] == tf.int64
  assert "bert/encoder/layer_0/output/adapters/weights1/adam_m" in shapes
  assert "output_weights/adam_v" in shapes

  model = make_model(num_labels=3)
  handler = _Records()
  absl_logger = logging.getLogger("absl")
  absl_logger.addHandler(handler)
  old_level = absl_logger.level
  absl_logger.setLevel(logging.DEBUG)
  try:
    restored, fresh = checkpoint_io.load_checkpoint(model, prefix)
  finally:
    absl_logger.removeHandler(handler)
    absl_logger.setLevel(old_level)
  assert fresh == []
  assert len(restored) == len(checkpoint_io.checkpoint_name_map(model))
  messages = [r.getMessage() for r in handler.records]
  warnings = [r for r in handler.records if r.levelno >= logging.WARNING]
  assert not warnings, messages
  assert not [m for m in messages if "Not in" in m or "fresh" in m], messages
  features = random_features(seed=2)
  np.testing.assert_array_equal(model(features).numpy(),
                                source(features).numpy())

  imported = adapter_io.import_reference_checkpoint(make_model(num_labels=3),
                                                    prefix)
  assert imported["global_step"] == 70
  assert imported["ignored"] == []
  trainable = modeling.trainable_names(model, "adapters")
  # The tags choose what the reference chose by name.
  assert trainable == [n for n in checkpoint_io.checkpoint_name_map(model)
                       if reference_trains(n, "adapters")]
  assert imported["slots"] == 2 * len(trainable)

  # A checkpoint without adapters and head is not a fine-tuned model.
  base = save_base(source, str(tmp_path / "base" / "bert_model.ckpt"))
  with pytest.raises(UserError, match="lacks 18 model variable"):
    adapter_io.import_reference_checkpoint(make_model(num_labels=3), base)


def test_export_to_the_reference_layout_is_lossless(tmp_path):
  source = make_model(num_labels=2)
  randomize(source, seed=8)
  prefix = adapter_io.export_reference_checkpoint(
      source, str(tmp_path / "export" / "model.ckpt-12"), global_step=12)
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  dtypes = reader.get_variable_to_dtype_map()
  assert dtypes["global_step"] == tf.int64
  assert int(reader.get_tensor("global_step")) == 12
  for name, value in values(source).items():
    np.testing.assert_array_equal(reader.get_tensor(name), value)
    has_slots = reference_trains(name, "adapters")
    for slot in adapter_io.reference_slot_names(name):
      assert (slot in shapes) == has_slots, slot
      if has_slots:
        assert not reader.get_tensor(slot).any()
  model_names = set(checkpoint_io.checkpoint_name_map(source))
  assert all(n in model_names or n == "global_step"
             or n.endswith(("/adam_m", "/adam_v")) for n in shapes)
  # The directory itself is a checkpoint (state file written).
  assert tf.train.latest_checkpoint(str(tmp_path / "export")) == prefix

  back = make_model(num_labels=2)
  info = adapter_io.import_reference_checkpoint(back, str(tmp_path / "export"))
  assert info["global_step"] == 12
  expected = values(source)
  assert all(np.array_equal(v, expected[n]) for n, v in values(back).items())

  # A TF1 graph-mode Saver (the reference toolkit) restores it too.
  graph = tf.Graph()
  with graph.as_default():
    restored = {n: tf.compat.v1.get_variable(n, shape=s, dtype=dtypes[n],
                                             use_resource=False)
                for n, s in shapes.items()}
    saver = tf.compat.v1.train.Saver(restored)
    with tf.compat.v1.Session(graph=graph) as session:
      saver.restore(session, prefix)
      got = session.run(restored)
  for name, value in values(source).items():
    np.testing.assert_array_equal(got[name], value)
  assert got["global_step"] == 12
