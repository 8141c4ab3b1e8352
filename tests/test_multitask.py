"""Several adapter tasks on one shared base: each alone and all in one pass."""

import os

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
from adapter_bert.errors import UserError
from test_modeling import randomize, tiny_config

# (task, adapter size, train mode): different heads, sizes and modes.
TASKS = (("mrpc", 4, "adapters"), ("mnli", 8, "adapters"), ("sts-b", 4, "head"))


def random_features(batch, seq, seed):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, seq + 1, batch)
  lengths[0] = seq
  mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
  return {
      "input_ids": (rng.integers(1, 50, (batch, seq)) * mask).astype(np.int32),
      "input_mask": mask,
      "segment_ids": ((np.arange(seq)[None, :] >= lengths[:, None] // 2)
                      * mask).astype(np.int32),
  }


def train_task(config, base, task, size, mode, directory, seed, extra=()):
  """A task model on `base` with random 'trained' weights, saved as adapter."""
  processor = glue_processors.get_processor(task)
  model = modeling.BertClassifier(config, processor.num_labels,
                                  adapters.AdapterConfig(size=size))
  checkpoint_io.load_checkpoint(model, base)
  trainable = modeling.set_train_mode(model, mode)
  name_map = checkpoint_io.checkpoint_name_map(model)
  trainable += [(n, name_map[n]) for n in extra]
  rng = np.random.default_rng(seed)
  base_names = set(checkpoint_io.base_names(model))
  for name, variable in name_map.items():
    if name in dict(trainable) or name not in base_names:
      value = rng.normal(0.0, 0.3, variable.shape)
      if name.endswith("gamma"):
        value += 1.0
      variable.assign(value.astype(np.float32))
  cfg = run_config.RunConfig(task_name=task, output_dir="unused",
                             bert_config_file="unused", vocab_file="unused",
                             max_seq_length=16, train_mode=mode)
  adapter_io.save_adapter(model, trainable, directory, model.adapter_config,
                          cfg, config, processor, base)
  return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multitask")
  config = tiny_config()
  pretrained = modeling.BertClassifier(config, 2)
  randomize(pretrained, seed=1)
  base = str(tmp / "base" / "bert_model.ckpt")
  checkpoint_io.save_checkpoint(base, checkpoint_io.base_tensors(pretrained))
  models, dirs = {}, []
  for i, (task, size, mode) in enumerate(TASKS):
    directory = str(tmp / task)
    model = train_task(config, base, task, size, mode, directory, seed=10 + i)
    models[glue_processors.get_processor(task).name] = model
    dirs.append(directory)
  mt = multitask.build_from_adapter_dirs(config, base, dirs)
  return dict(tmp=tmp, config=config, base=base, models=models, dirs=dirs,
              mt=mt)


def test_predict_all_equals_each_task_alone(setup):
  mt, models = setup["mt"], setup["models"]
  assert mt.task_names == ["MRPC", "MNLI", "STS-B"]
  for batch, seq, seed in ((5, 12, 0), (3, 7, 1)):
    features = random_features(batch, seq, seed)
    logits_all = mt.logits_all(features)  # Stacked tasks (the default).
    side_by_side = mt.logits_all(features, stack_tasks=False)
    outputs_all = mt.predict_all(features)
    assert list(outputs_all) == mt.task_names
    for name, model in models.items():
      reference = model(features).numpy()  # A plain BertClassifier.
      alone = mt.logits(name, features).numpy()
      np.testing.assert_allclose(alone, reference, rtol=0, atol=1e-5)
      np.testing.assert_allclose(logits_all[name].numpy(), alone, rtol=0,
                                 atol=1e-5)
      np.testing.assert_allclose(side_by_side[name].numpy(), alone, rtol=0,
                                 atol=1e-5)
      prediction = mt.predict(name, features).numpy()
      np.testing.assert_allclose(outputs_all[name].numpy(), prediction,
                                 rtol=0, atol=1e-5)
      if name == "STS-B":
        assert prediction.shape == (batch,)
        np.testing.assert_allclose(prediction, reference[:, 0], atol=1e-5)
      else:
        assert prediction.shape == (batch, model.num_labels)
        np.testing.assert_allclose(prediction, tf.nn.softmax(reference).numpy(),
                                   atol=1e-5)
  # A subset, in another order, and task names in another spelling.
  subset = mt.logits_all(features, task_names=["sts_b", "mrpc"])
  assert list(subset) == ["STS-B", "MRPC"]
  np.testing.assert_allclose(subset["MRPC"].numpy(),
                             models["MRPC"](features).numpy(), atol=1e-5)


def test_adapters_of_one_size_run_as_batched_products(setup, monkeypatch):
  # MRPC and RTE both have size-4 adapters at both locations: predict_all
  # runs them as batched products over the tasks, never task by task.
  rte_dir = str(setup["tmp"] / "rte")
  rte = train_task(setup["config"], setup["base"], "rte", 4, "adapters",
                   rte_dir, seed=20)
  mt = multitask.build_from_adapter_dirs(setup["config"], setup["base"],
                                         [setup["dirs"][0], rte_dir])

  def task_by_task(*args, **kwargs):
    raise AssertionError("adapters ran task by task")

  features = random_features(4, 9, 2)
  want = {"MRPC": setup["models"]["MRPC"](features).numpy(),
          "RTE": rte(features).numpy()}
  with monkeypatch.context() as patch:
    patch.setattr(adapters.BottleneckAdapter, "call", task_by_task)
    logits = mt.logits_all(features)
  for name, value in want.items():
    np.testing.assert_allclose(logits[name].numpy(), value, rtol=0, atol=1e-5)


def test_the_base_is_held_once(setup):
  mt = setup["mt"]
  views = [checkpoint_io.checkpoint_name_map(mt.task_view(b))
           for b in mt.branches]
  tags = checkpoint_io.checkpoint_tags(mt.task_view(mt.branches[0]))
  shared = [n for n in views[0] if tags[n] == modeling.BASE]
  for view in views[1:]:
    assert all(view[n] is views[0][n] for n in shared)
  for view in views:
    own = [n for n in view if n not in shared]
    others = [other for other in views if other is not view]
    assert all(not any(view[n] is other[n] for other in others) for n in own)
  # Per task: its adapters, LayerNorms and head, much smaller than the base.
  def size(name_map, names):
    return sum(int(np.prod(name_map[n].shape)) for n in names)
  base_size = size(views[0], shared)
  for view, model in zip(views, setup["models"].values()):
    model_map = checkpoint_io.checkpoint_name_map(model)
    assert list(view) == list(model_map)
    own = [n for n in view if n not in shared]
    assert size(view, own) == size(model_map, own) < base_size / 4


def test_tasks_must_share_the_same_base(setup):
  other = modeling.BertClassifier(setup["config"], 2)
  randomize(other, seed=99)
  prefix = str(setup["tmp"] / "other" / "bert_model.ckpt")
  checkpoint_io.save_checkpoint(prefix, checkpoint_io.base_tensors(other))
  mt = multitask.MultiTaskModel(setup["config"])
  mt.load_base(prefix)
  with pytest.raises(UserError, match="trained on another base model "
                     r"\(fingerprint [0-9a-f]{16}, this base [0-9a-f]{16}\)"):
    mt.add_task(setup["dirs"][0])
  assert mt.task_names == []


def test_loading_errors(setup, tmp_path):
  config, base = setup["config"], setup["base"]
  mt = multitask.MultiTaskModel(config)
  mt.load_base(base)
  mt.add_task(setup["dirs"][0])
  with pytest.raises(UserError, match="loaded twice"):
    mt.add_task(setup["dirs"][0])
  mt.add_task(setup["dirs"][0], task_name="mrpc-copy")
  assert mt.task_names == ["MRPC", "mrpc-copy"]
  with pytest.raises(UserError, match="unknown task 'rte'; loaded tasks: MRPC"):
    mt.predict("rte", random_features(2, 5, 0))
  # An adapter that also changed a shared dense kernel cannot share the base.
  directory = str(tmp_path / "changed")
  train_task(config, base, "rte", 4, "adapters", directory, seed=3,
             extra=["bert/encoder/layer_1/intermediate/dense/kernel"])
  with pytest.raises(UserError, match="changes base weights shared by every "
                     "task.*intermediate/dense/kernel"):
    mt.add_task(directory)
  with pytest.raises(UserError, match="not an adapter directory"):
    mt.add_task(str(tmp_path))


def test_a_task_from_a_full_checkpoint(setup, tmp_path):
  model = setup["models"]["MNLI"]
  prefix = adapter_io.export_reference_checkpoint(
      model, str(tmp_path / "model.ckpt-5"), global_step=5)
  mt = multitask.MultiTaskModel(setup["config"])
  mt.load_base(prefix)
  mt.add_task_from_checkpoint(prefix, "MNLI", model.adapter_config, 3,
                              {"label_list": ["contradiction", "entailment",
                                              "neutral"]})
  features = random_features(4, 9, 5)
  np.testing.assert_allclose(mt.logits("MNLI", features).numpy(),
                             model(features).numpy(), atol=1e-5)
  # The same checkpoint on another base is refused.
  mt = multitask.MultiTaskModel(setup["config"])
  with pytest.raises(UserError, match="base weights differ"):
    mt.add_task_from_checkpoint(prefix, "MNLI", model.adapter_config, 3)


def test_task_key():
  assert multitask.task_key("SST-2") == "sst_2"
  assert multitask.task_key("MNLI-mm") == "mnli_mm"
  assert multitask.task_key("--") == "task"


def test_methods_that_cannot_stack_run_each_alone(setup, tmp_path):
  # Prefix tuning and prompts change the keys or the sequence, so tasks of
  # those methods cannot share one Parallel pass: predict_all runs each on
  # its own (in one graph), with the stacked default still giving each
  # task's own logits.
  config, base = setup["config"], setup["base"]
  dirs, references = [setup["dirs"][0]], {}
  for i, (task, method) in enumerate((("RTE", "prefix_tuning"),
                                      ("QNLI", "prompt_tuning"))):
    model = modeling.BertAdapterModel(config)
    model.load_base_checkpoint(base)
    model.add_adapter(task, method, set_active=True)
    model.add_classification_head(task, num_labels=2)
    rng = np.random.default_rng(30 + i)
    for name, v in model.adapter_view(task).checkpoint_name_map().items():
      if "prefix_tuning" in name or "prompt_tuning" in name or (
          name.startswith("output_")):
        v.assign(rng.normal(0.0, 0.3, v.shape).astype(np.float32))
    directory = str(tmp_path / task)
    model.save_adapter(directory, task, metadata={"task_name": task})
    dirs.append(directory)
    references[task] = model
  mt = multitask.build_from_adapter_dirs(config, base, dirs)
  features = random_features(4, 9, 5)
  stacked = mt.logits_all(features)
  for task, model in references.items():
    np.testing.assert_allclose(stacked[task].numpy(),
                               model.predict(features, verbose=0), atol=1e-5)
  np.testing.assert_allclose(stacked["MRPC"].numpy(),
                             setup["models"]["MRPC"](features).numpy(),
                             atol=1e-5)
