"""The model API: named adapters and heads, Keras fit, tags, methods by name."""

import dataclasses
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from adapter_bert import adapters
from adapter_bert.adapters import composition
from adapter_bert.adapters import hub_layout
from adapter_bert.adapters import registry
from adapter_bert.data import glue_processors
from adapter_bert.data import input_pipeline
from adapter_bert.model import modeling
from adapter_bert.compute import optimization
from adapter_bert.storage import checkpoint_io
from adapter_bert.storage import torch_formats
from adapter_bert.text import tokenization
from adapter_bert.training import trainer as trainer_lib
from adapter_bert.errors import UserError
import tiny_fixtures

README = os.path.join(tiny_fixtures.REPO_ROOT, "README.md")


def tiny_base(tmp_path, seed=0):
  """A Google-format directory (config, vocab, checkpoint) of a tiny BERT."""
  directory = str(tmp_path / "base")
  tiny_fixtures.write_model(directory, seed=seed)
  return directory


def all_values(model):
  return {v.path: v.numpy().copy() for v in model.weights}


def readme_example():
  """The Python block of the README's API section, as written there."""
  text = open(README, encoding="utf-8").read()
  section = text[text.index("## Python API"):]
  match = re.search(r"```python\n(.*?)```", section, re.S)
  assert match, "README has no python example in its Python API section"
  return match.group(1)


def test_readme_python_example_runs_as_written(tmp_path):
  code = readme_example()
  base = tiny_base(tmp_path)
  mrpc = tiny_fixtures.write_mrpc(str(tmp_path / "MRPC"))
  # Only the paths and sizes change: the tiny model and data, 5 steps.
  replacements = {
      '"../shared/bert/minilm_l6_h384_uncased"': repr(base),
      '"../shared/glue_data/MRPC"': repr(mrpc),
      '"/tmp/mrpc_features"': repr(str(tmp_path / "features")),
      '"/tmp/mrpc_adapter"': repr(str(tmp_path / "mrpc_adapter")),
      "max_seq_length=128": "max_seq_length=24",
      "num_train_steps=573": "num_train_steps=5",
      "steps_per_epoch=573": "steps_per_epoch=5",
      "batch_size=32": "batch_size=8",
  }
  for old, new in replacements.items():
    assert old in code, "the README example no longer has %s" % old
    code = code.replace(old, new)

  # Run it in two parts to look at the model around `fit`.
  before_fit, after_fit = code.split("model.fit(", 1)
  after_fit = "model.fit(" + after_fit
  scope = {}
  exec(compile(before_fit, "README example", "exec"), scope)  # pylint: disable=exec-used
  model = scope["model"]
  assert sorted(model.adapters) == ["mrpc", "rte"]
  assert sorted(model.heads) == ["mrpc", "rte"]
  assert model.active_head == "mrpc"
  frozen = {}
  for name, (variable, tag) in model.adapter_view("rte").checkpoint_variables(
      ).items():
    if tag.owner == "rte" or tag.kind == "base":
      frozen[name] = variable.numpy().copy()
  base_norms = model.view(composition.Branch()).checkpoint_name_map()
  frozen.update({"base:" + n: v.numpy().copy() for n, v in base_norms.items()})
  mrpc_before = {n: v.numpy().copy() for n, v in
                 model.adapter_view("mrpc").checkpoint_name_map().items()}

  exec(compile(after_fit, "README example", "exec"), scope)  # pylint: disable=exec-used
  # The other adapter, its head and every base variable: bit-identical.
  after = {n: v.numpy() for n, (v, tag) in
           model.adapter_view("rte").checkpoint_variables().items()
           if tag.owner == "rte" or tag.kind == "base"}
  after.update({"base:" + n: v.numpy() for n, v in base_norms.items()})
  assert frozen.keys() == after.keys()
  for name, value in frozen.items():
    np.testing.assert_array_equal(after[name], value, err_msg=name)
  # mrpc's adapter, LayerNorms and head trained.
  tags = checkpoint_io.checkpoint_tags(model.adapter_view("mrpc"))
  for name, variable in model.adapter_view("mrpc").checkpoint_name_map(
      ).items():
    changed = not np.array_equal(variable.numpy(), mrpc_before[name])
    assert changed == (tags[name].kind != "base"), name

  # Loaded into a fresh model under another name: the same predictions.
  fresh = scope["fresh"]
  assert scope["name"] == "paraphrase"
  assert fresh.active_head == "paraphrase"
  data = scope["data"]
  model.set_active_adapters("mrpc")
  want = model.predict(data.eval_dataset("dev", batch_size=8), verbose=0)
  np.testing.assert_array_equal(scope["logits"], want)
  assert scope["logits"].shape[1] == 2 and len(scope["logits"]) >= 20


def make_two_adapter_model(layers=2):
  config = modeling.BertConfig(
      vocab_size=40, hidden_size=16, num_hidden_layers=layers,
      num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
      type_vocab_size=2)
  model = modeling.BertAdapterModel(config)
  model.add_adapter("a")
  model.add_adapter("b", adapters.AdapterConfig(size=8,
                                                locations=("ffn_output",)))
  model.add_classification_head("a", 2)
  model.add_classification_head("b", 3)
  return model


def _golden_layer(i, norms=True, attention_adapter=True, ffn_adapter=True):
  p = "bert/encoder/layer_%d/" % i
  names = []
  if attention_adapter:
    names += [p + "attention/output/adapters/" + w
              for w in ("weights1", "biases1", "weights2", "biases2")]
  if norms:
    names += [p + "attention/output/LayerNorm/gamma",
              p + "attention/output/LayerNorm/beta"]
  if ffn_adapter:
    names += [p + "output/adapters/" + w
              for w in ("weights1", "biases1", "weights2", "biases2")]
  if norms:
    names += [p + "output/LayerNorm/gamma", p + "output/LayerNorm/beta"]
  return names


EMBEDDING_NORM = ["bert/embeddings/LayerNorm/gamma",
                  "bert/embeddings/LayerNorm/beta"]
HEAD = ["output_weights", "output_bias"]


def trained_variables(model):
  """{id: variable} of the model's trainable variables."""
  return {id(v): v for v in model.trainable_variables}


def test_golden_trainable_names_of_train_adapter_and_train_modes():
  model = make_two_adapter_model()
  golden_a = (EMBEDDING_NORM + _golden_layer(0) + _golden_layer(1) + HEAD)
  golden_b = (EMBEDDING_NORM
              + _golden_layer(0, attention_adapter=False)
              + _golden_layer(1, attention_adapter=False) + HEAD)
  for name, golden in (("a", golden_a), ("b", golden_b)):
    trained = model.train_adapter(name)
    assert [n for n, _ in trained] == golden
    # Exactly these variables are trainable in Keras, and they are the
    # adapter's own: the other adapter's copies and the base are frozen.
    assert set(trained_variables(model)) == {id(v) for _, v in trained}
    view = model.adapter_view(name)
    tags = checkpoint_io.checkpoint_tags(view)
    assert {tags[n].owner for n in golden} == {name}
    assert model.active_adapters == composition.Stack(name)
  model.set_active_adapters("a")
  everything = list(checkpoint_io.checkpoint_name_map(model))
  assert [n for n, _ in model.set_train_mode("full")] == everything
  assert [n for n, _ in model.set_train_mode("head")] == HEAD
  assert [n for n, _ in model.set_train_mode("adapters")] == golden_a
  # Without adapters, "adapters" trains the base's LayerNorms and the head,
  # as the reference did with adapter_size=0.
  model.set_active_adapters(None)
  model.active_head = "a"
  names = [n for n, _ in model.set_train_mode("adapters")]
  assert names == (EMBEDDING_NORM + _golden_layer(0, attention_adapter=False,
                                                   ffn_adapter=False)
                   + _golden_layer(1, attention_adapter=False,
                                   ffn_adapter=False) + HEAD)
  tags = checkpoint_io.checkpoint_tags(model)
  assert all(tags[n] == modeling.BASE_LAYER_NORM for n in names[:-2])


def _batches(n=3, batch=8, seq=12, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    lengths = rng.integers(4, seq + 1, batch)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    out.append({"input_ids": (rng.integers(5, 40, (batch, seq)) * mask
                              ).astype(np.int32),
                "input_mask": mask,
                "segment_ids": ((np.arange(seq)[None] >= lengths[:, None] // 2)
                                * mask).astype(np.int32),
                "label_ids": rng.integers(0, 2, batch).astype(np.int32)})
  return out


def _seeded_tiny_classifier():
  """A tiny classifier with seeded random weights (gammas near 1) and its
  "default" adapter's LayerNorm copies taken from them."""
  keras.utils.set_random_seed(3)
  model = tiny_fixtures.tiny_classifier(dropout=0.1)
  rng = np.random.default_rng(5)
  for name, v in checkpoint_io.checkpoint_name_map(model).items():
    v.assign((rng.normal(0, 0.2, size=v.shape)
              + (1.0 if name.endswith("gamma") else 0.0)).astype(np.float32))
  model.reset_layer_norms("default")
  return model


def test_fit_and_the_command_line_loop_give_the_same_weights():
  build = _seeded_tiny_classifier
  batches = _batches(n=5)

  def dataset(start_step=0):
    return tf.data.Dataset.from_tensor_slices(
        {k: np.stack([b[k] for b in batches]) for k in batches[0]}).skip(
            start_step)

  # The command line's loop.
  loop_model = build()
  trainable = modeling.set_train_mode(loop_model, "adapters")
  trainer = trainer_lib.Trainer(
      loop_model, optimization.create_optimizer(1e-2, 5, 1), trainable,
      tf.distribute.get_strategy(), "/tmp", num_labels=2,
      is_regression=False, global_batch_size=8, seed=7)
  trainer._build_train_loop()  # pylint: disable=protected-access
  iterator = iter(dataset())
  for _ in range(5):
    trainer._train_loop(iterator, tf.constant(1))  # pylint: disable=protected-access

  # Keras fit, the same start, data, seed and recipe.
  fit_model = build()
  fit_model.train_adapter("default")
  fit_model.compile(optimizer=optimization.create_optimizer(1e-2, 5, 1),
                    seed=7)
  history = fit_model.fit(dataset(), epochs=1, steps_per_epoch=5, verbose=0)
  assert np.isfinite(history.history["loss"]).all()

  loop_values = checkpoint_io.checkpoint_name_map(loop_model)
  changed = 0
  for name, variable in checkpoint_io.checkpoint_name_map(fit_model).items():
    np.testing.assert_allclose(variable.numpy(), loop_values[name].numpy(),
                               rtol=0, atol=1e-6, err_msg=name)
    changed += name in dict(trainable)
  assert changed == len(trainable)
  assert int(fit_model.optimizer.iterations.numpy()) == 5
  # Labels as Keras' usual (features, labels) pairs train the same way.
  pairs = tf.data.Dataset.from_tensor_slices((
      {k: np.stack([b[k] for b in batches]) for k in modeling.INPUT_NAMES},
      np.stack([b["label_ids"] for b in batches])))
  pair_model = build()
  pair_model.train_adapter("default")
  pair_model.compile(optimizer=optimization.create_optimizer(1e-2, 5, 1),
                     seed=7)
  pair_model.fit(pairs, epochs=1, steps_per_epoch=5, verbose=0)
  for name, variable in checkpoint_io.checkpoint_name_map(pair_model).items():
    np.testing.assert_array_equal(
        variable.numpy(), checkpoint_io.checkpoint_name_map(fit_model)[name])
  # evaluate and predict take the same inputs.
  result = pair_model.evaluate(pairs, verbose=0, return_dict=True)
  assert np.isfinite(result["loss"])
  logits = pair_model.predict(pairs, verbose=0)
  assert logits.shape == (40, 2)
  np.testing.assert_allclose(
      logits[:8], pair_model(modeling.model_inputs(batches[0])).numpy(),
      atol=1e-6)


# A toy adapter method, registered from this file alone: a learned scale of
# each feature at the feed-forward output.


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
  kind: str = "test_scale"
  init: float = 1.0

  def to_dict(self):
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d):
    return cls(**d)


class ScaleLayer(keras.layers.Layer):

  def __init__(self, hidden, init, **kwargs):
    super().__init__(**kwargs)
    self.scale = self.add_weight(
        name="scale", shape=(hidden,),
        initializer=keras.initializers.Constant(init))

  def checkpoint_variables(self):
    return [("scale/vector", self.scale)]

  def call(self, x, training=False, policy=None):
    return x * tf.cast(self.scale, x.dtype)


def _scale_layers(config, bert_config, where):
  if where == "embeddings":
    return {}
  return {"ffn_output": ScaleLayer(bert_config.hidden_size, config.init,
                                   name="ffn_output")}


def test_a_method_registered_from_a_test_file_trains():
  registry.register_method("test_scale", ScaleConfig, _scale_layers)
  try:
    model = make_two_adapter_model(layers=1)
    model.add_adapter("scaled", ScaleConfig(init=50.0))
    model.add_classification_head("scaled", 2)
    names = [n for n, _ in model.train_adapter("scaled")]
    # No LayerNorm copies for this method: only its vector and its head.
    assert names == ["bert/encoder/layer_0/output/scale/vector"] + HEAD
    batch = _batches(n=1, seq=10)[0]
    features = modeling.model_inputs(batch)
    _, plain = model.encode(features, setup=composition.ActiveSetup(
        (composition.Branch((), None, "scaled"),)))
    _, scaled = model.encode(features)
    # The layer is applied.
    assert np.max(np.abs(scaled.numpy() - plain.numpy())) > 1e-3
    before = model.adapter_view("scaled").checkpoint_name_map()[
        "bert/encoder/layer_0/output/scale/vector"].numpy().copy()
    model.compile(optimizer=optimization.create_optimizer(5e-2, 4, 0))
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=1,
              steps_per_epoch=4, verbose=0)
    after = model.adapter_view("scaled").checkpoint_name_map()[
        "bert/encoder/layer_0/output/scale/vector"].numpy()
    assert np.max(np.abs(after - before)) > 1e-4
    # Its config goes through JSON like any method's.
    assert registry.config_from_dict(ScaleConfig(init=2.0).to_dict()) == (
        ScaleConfig(init=2.0))
  finally:
    registry.METHODS.pop("test_scale", None)


@dataclasses.dataclass(frozen=True)
class ValueScaleConfig(ScaleConfig):
  kind: str = "test_value_scale"

  architecture = "test_value_scale"  # Its name in AdapterHub's files.

  @classmethod
  def from_dict(cls, d):
    return cls(**{k: v for k, v in d.items() if k != "architecture"})


# Where AdapterHub would keep such a method's vector: as if its own module
# on the value projection held it as a column [H, 1].
VALUE_SCALE_LAYOUT = hub_layout.AdapterHubLayout((hub_layout.HubTensor(
    "bert/encoder/layer_{layer}/attention/self/value/value_scale",
    "bert.encoder.layer.{layer}.attention.self.value.scales.{adapter}.s",
    theirs_shape="column"),))


def _geometric(config, weights, sources, linear, svd_rank):
  """A combine strategy of the test method: the weighted geometric mean."""
  del linear, svd_rank
  return config, {key: np.exp(sum(w * np.log(src[key])
                                  for w, src in zip(weights, sources)))
                  for key in sources[0]}


class ValueScaleLayer(ScaleLayer):
  """Scales the value projection's output columns; owns its merge."""

  def __init__(self, width, init, **kwargs):
    super().__init__(width, init, **kwargs)
    self.merged = False

  def checkpoint_variables(self):
    return [("value_scale", self.scale)]

  def call(self, x, projected, training=False, policy=None):
    if self.merged:
      return projected
    return projected * tf.cast(self.scale, projected.dtype)

  def merge_into(self, dense):
    if not self.merged:
      dense.kernel.assign(dense.kernel * self.scale)
      dense.bias.assign(dense.bias * self.scale)
      self.merged = True

  def reset_from(self, dense):
    if self.merged:
      dense.kernel.assign(dense.kernel / self.scale)
      dense.bias.assign(dense.bias / self.scale)
      self.merged = False


def _value_scale_layers(config, bert_config, where):
  if where == "embeddings":
    return {}
  return {"value": ValueScaleLayer(bert_config.hidden_size, config.init,
                                   name="value")}


def adapters_io_tensors(directory):
  return torch_formats.read_tensors(os.path.join(directory,
                                                 "adapter.safetensors"))


def test_a_method_from_a_test_file_declares_its_capabilities(tmp_path):
  """Everything method-specific is asked of the method, never decided by
  its name: a method registered here alone merges through its own layers,
  says why it is not fused, resizes, trains, names its variables in
  AdapterHub's files (saved and loaded both ways), and averages by its own
  strategy."""
  registry.register_method(
      "test_value_scale", ValueScaleConfig, _value_scale_layers,
      fusion_refusal=lambda config: "value scales are not fused",
      resize=lambda config, size, bert_config: dataclasses.replace(
          config, init=float(size)),
      adapterhub=VALUE_SCALE_LAYOUT,
      combine_strategies={"test_geometric": _geometric})
  try:
    model = make_two_adapter_model(layers=1)
    model.add_adapter("v", ValueScaleConfig(init=1.5))
    model.add_adapter("w", ValueScaleConfig(init=0.5))
    model.add_classification_head("v", 2)
    model.set_active_adapters("v")
    features = modeling.model_inputs(_batches(n=1, seq=10)[0])
    want = model(features).numpy()
    assert model.can_merge("v") and not model.can_merge("a")
    model.merge_adapter("v")
    model.set_active_adapters(None)
    model.active_head = "v"
    np.testing.assert_allclose(model(features).numpy(), want, atol=1e-5)
    model.reset_adapter("v")
    model.set_active_adapters("v")
    np.testing.assert_allclose(model(features).numpy(), want, atol=1e-5)
    with pytest.raises(UserError, match="'v' .* cannot be fused: value "
                       "scales are not fused"):
      model.add_adapter_fusion(["v", "w"])
    assert registry.resize(ValueScaleConfig(), 8, model.config) == (
        ValueScaleConfig(init=8.0))
    # It trains (its vector is the adapter's one trained variable there).
    names = [n for n, _ in model.train_adapter("v")]
    assert names[:2] == ["bert/encoder/layer_0/attention/self/value/"
                         "value_scale"] + HEAD[:1]
    batch = _batches(n=1, seq=10)[0]
    model.compile(optimizer=optimization.create_optimizer(5e-2, 3, 0))
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=1,
              steps_per_epoch=3, verbose=0)
    trained = model(features).numpy()
    assert np.max(np.abs(trained - want)) > 1e-4
    # Saved and loaded in this toolkit's layout and in AdapterHub's (its
    # names from the method's layout: a column there, a vector here).
    mine = model.save_adapter(str(tmp_path / "mine"), "v")
    theirs = model.save_adapter(str(tmp_path / "theirs"), "v",
                                format="adapterhub")
    saved = adapters_io_tensors(theirs)
    assert list(saved) == [
        "bert.encoder.layer.0.attention.self.value.scales.v.s"]
    assert saved["bert.encoder.layer.0.attention.self.value.scales.v.s"
                 ].shape == (model.config.hidden_size, 1)
    for directory, as_name in ((mine, "v1"), (theirs, "v2")):
      assert model.load_adapter(directory, load_as=as_name,
                                with_head=False) == as_name
      assert model.adapters[as_name] == model.adapters["v"]
      model.set_active_adapters(as_name)
      model.active_head = "v"
      np.testing.assert_array_equal(model(features).numpy(), trained)
    # Averaged by its own strategy; merged through its own layers.
    model.average_adapter("g", {"v": 0.5, "w": 0.5},
                          combine_strategy="test_geometric")
    got = model.adapter_view("g").checkpoint_name_map()[
        "bert/encoder/layer_0/attention/self/value/value_scale"].numpy()
    v, w = (model.adapter_view(n).checkpoint_name_map()[
        "bert/encoder/layer_0/attention/self/value/value_scale"].numpy()
            for n in ("v", "w"))
    np.testing.assert_allclose(got, np.sqrt(v * w), rtol=1e-5)
    with pytest.raises(UserError, match="combine_strategy 'test_geometric' "
                       "is for test_value_scale adapters"):
      model.average_adapter("bad", ["a"], combine_strategy="test_geometric")
    model.set_active_adapters("v")
    model.merge_adapter("v")
    model.set_active_adapters(None)
    np.testing.assert_allclose(model(features).numpy(), trained, atol=1e-5)
    model.reset_adapter("v")
    with pytest.raises(UserError, match="--adapter_size does not apply to a "
                       "test_scale adapter"):
      registry.register_method("test_scale", ScaleConfig, _scale_layers)
      registry.resize(ScaleConfig(), 8, model.config)
  finally:
    registry.METHODS.pop("test_value_scale", None)
    registry.METHODS.pop("test_scale", None)


def test_save_and_load_adapter_under_another_name(tmp_path):
  base = tiny_base(tmp_path)
  model = modeling.BertAdapterModel.from_pretrained(base)
  model.add_adapter("a")
  model.add_classification_head("a", 2)
  rng = np.random.default_rng(0)
  for name, (v, tag) in model.adapter_view("a").checkpoint_variables().items():
    if tag.kind != "base":
      v.assign(rng.normal(0, 0.3, v.shape).astype(np.float32)
               + (1.0 if name.endswith("gamma") else 0.0))
  model.set_active_adapters("a")
  directory = model.save_adapter(str(tmp_path / "saved"), "a")
  features = modeling.model_inputs(_batches(n=1)[0])
  want = model(features).numpy()
  fresh = modeling.BertAdapterModel.from_pretrained(base)
  assert fresh.load_adapter(directory) == "a"  # The name it was saved under.
  assert fresh.load_adapter(directory, load_as="b") == "b"
  for name in ("a", "b"):
    fresh.set_active_adapters(name)
    np.testing.assert_array_equal(fresh(features).numpy(), want)
  # save_all_adapters writes one directory per adapter.
  written = fresh.save_all_adapters(str(tmp_path / "all"))
  assert sorted(written) == ["a", "b"]
  assert all(os.path.isdir(d) for d in written.values())
  # Today's command-line adapter directories load too (no adapter_name).
  fresh.delete_adapter("a")
  fresh.delete_head("a")
  assert "a" not in fresh.adapters and "a" not in fresh.heads


def test_api_errors_name_the_culprit(tmp_path):
  base = tiny_base(tmp_path)
  model = modeling.BertAdapterModel.from_pretrained(base)
  model.add_adapter("a")
  model.add_classification_head("a", 2)
  with pytest.raises(UserError, match="an adapter named 'a' exists already"):
    model.add_adapter("a")
  with pytest.raises(UserError, match="a head named 'a' exists already"):
    model.add_classification_head("a", 3)
  with pytest.raises(UserError, match="unknown adapter 'nope'; this model "
                     "has a"):
    model.set_active_adapters("nope")
  with pytest.raises(UserError, match="unknown adapter 'nope'"):
    model.train_adapter("nope")
  with pytest.raises(UserError, match="unknown adapter 'nope'"):
    model.delete_adapter("nope")
  with pytest.raises(UserError, match="unknown head 'nope'; this model has a"):
    model.active_head = "nope"
  with pytest.raises(UserError, match="unknown adapter method 'lora2'"):
    model.add_adapter("c", {"kind": "lora2"})
  with pytest.raises(UserError, match="unknown adapter preset"):
    model.add_adapter("c", "no-such-preset")
  with pytest.raises(UserError, match="compile.loss='no_such_loss'.: "):
    model.compile(loss="no_such_loss")
  with pytest.raises(UserError, match="vocabulary .* not found"):
    modeling.BertAdapterModel.from_pretrained(
        os.path.join(base, "bert_config.json"), vocab_file="/nonexistent",
        init_checkpoint=os.path.join(base, "bert_model.ckpt"))
  directory = model.save_adapter(str(tmp_path / "a"), "a")
  # An adapter of another base (other weights): both fingerprints named.
  other = modeling.BertAdapterModel.from_pretrained(
      tiny_base(tmp_path / "other", seed=5))
  with pytest.raises(UserError, match="trained on another base model "
                     r"\(fingerprint [0-9a-f]{16}, this base [0-9a-f]{16}\)"):
    other.load_adapter(directory, load_as="x")
  assert "x" not in other.adapters and "x" not in other.heads  # Nothing left.
  # An adapter of another size than the directory's variables.
  model.add_adapter("wide", adapters.AdapterConfig(size=8))
  wide = model.save_adapter(str(tmp_path / "wide"), "wide")
  config_file = os.path.join(wide, "adapter_config.json")
  text = open(config_file).read().replace('"size": 8', '"size": 16')
  open(config_file, "w").write(text)
  with pytest.raises(UserError, match="has shape .* but the model expects"):
    model.load_adapter(wide, load_as="wider")
  assert "wider" not in model.adapters
  # A base of another BERT config.
  other_dir = str(tmp_path / "wider_base")
  tiny_fixtures.write_model(other_dir, intermediate_size=24)
  other = modeling.BertAdapterModel.from_pretrained(other_dir)
  with pytest.raises(UserError, match="another BERT config "
                     r"\(intermediate_size=32 there, 24 here\)"):
    other.load_adapter(directory)
  with pytest.raises(UserError, match="exists already; load it with load_as"):
    model.load_adapter(directory)


def test_parallel_runs_each_adapter_with_its_head():
  model = make_two_adapter_model()
  rng = np.random.default_rng(1)
  for name in ("a", "b"):
    for n, (v, tag) in model.adapter_view(name).checkpoint_variables().items():
      if tag.kind != "base":
        v.assign(rng.normal(0, 0.3, v.shape).astype(np.float32)
                 + (1.0 if n.endswith("gamma") else 0.0))
  features = modeling.model_inputs(_batches(n=1)[0])
  alone = {}
  for name in ("a", "b"):
    model.set_active_adapters(name)
    alone[name] = model(features).numpy()
  model.set_active_adapters(adapters.Parallel("a", "b"))
  both = model(features)
  assert sorted(both) == ["a", "b"] and model.active_head == ["a", "b"]
  for name in ("a", "b"):
    np.testing.assert_allclose(both[name].numpy(), alone[name], atol=1e-5)
  predicted = model.predict(features, verbose=0)
  np.testing.assert_allclose(predicted["b"], alone["b"], atol=1e-5)


# Toy layers at the other hook points, each equal to an edit of the base.


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  kind: str = "test_probe"

  def to_dict(self):
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d):
    return cls(**d)


class _Shift(keras.layers.Layer):
  """projected + c at a projection hook (as a bias of c)."""

  def __init__(self, hidden, **kwargs):
    super().__init__(**kwargs)
    self.c = self.add_weight(name="c", shape=(hidden,),
                             initializer=keras.initializers.Constant(0.25))

  def checkpoint_variables(self):
    return [("shift/c", self.c)]

  def call(self, x, projected, training=False, policy=None):
    return projected + self.c


class _DoubleKeys(keras.layers.Layer):
  """Keys times 2 (as query kernel and bias times 2)."""

  def checkpoint_variables(self):
    return []

  def call(self, k, v, mask_adder, training=False, policy=None):
    return k * 2.0, v, mask_adder


class _Twice(keras.layers.Layer):
  """x times 2 (as the embeddings' LayerNorm gamma and beta times 2)."""

  def checkpoint_variables(self):
    return []

  def call(self, x, training=False, policy=None):
    return x * 2.0


def _probe_layers(config, bert_config, where):
  if where == "embeddings":
    return {"embedding_output": _Twice(name="embedding_output")}
  return {"value": _Shift(bert_config.hidden_size, name="value"),
          "attention_keys_values": _DoubleKeys(name="attention_keys_values")}


def test_hook_points_at_projections_keys_values_and_embeddings():
  registry.register_method("test_probe", ProbeConfig, _probe_layers)
  try:
    model = make_two_adapter_model(layers=2)
    randomize = np.random.default_rng(3)
    for v in model.weights:
      v.assign(randomize.normal(0, 0.2, v.shape).astype(np.float32)
               + (1.0 if v.path.endswith("gamma") else 0.0))
    model.add_adapter("probe", ProbeConfig())
    model.add_classification_head("probe", 2)
    names = list(model.adapter_view("probe").checkpoint_name_map())
    assert "bert/encoder/layer_1/attention/self/value/shift/c" in names
    features = modeling.model_inputs(_batches(n=1, seq=9)[0])
    model.set_active_adapters("probe")
    seq_hooked, _ = model.encode(features)
    # The same model without the adapter, its base edited to match.
    model.set_active_adapters(None)
    model.active_head = "probe"
    emb = model.bert.embeddings.layer_norm
    emb.gamma.assign(emb.gamma * 2.0)
    emb.beta.assign(emb.beta * 2.0)
    for block in model.bert.blocks:
      attention = block.attention
      attention.value.bias.assign(attention.value.bias + 0.25)
      attention.query.kernel.assign(attention.query.kernel * 2.0)
      attention.query.bias.assign(attention.query.bias * 2.0)
    seq_edited, _ = model.encode(features)
    np.testing.assert_allclose(seq_hooked.numpy(), seq_edited.numpy(),
                               atol=2e-5)
    assert np.max(np.abs(seq_hooked.numpy())) > 0.1
  finally:
    registry.METHODS.pop("test_probe", None)


def _trained_with_loss(loss, steps=3):
  """Weights after `steps` fit steps of a seeded tiny classifier compiled
  with `loss` (None: the default)."""
  model = _seeded_tiny_classifier()
  model.train_adapter("default")
  kwargs = {} if loss is None else {"loss": loss}
  model.compile(optimizer=optimization.create_optimizer(1e-2, steps, 1),
                seed=7, **kwargs)
  batches = _batches(n=steps)
  data = tf.data.Dataset.from_tensor_slices(
      {k: np.stack([b[k] for b in batches]) for k in batches[0]})
  model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
  return {n: v.numpy() for n, v in
          checkpoint_io.checkpoint_name_map(model).items()}


def test_compile_takes_a_keras_loss():
  """Keras' own spelling of the built-in loss trains bit for bit as the
  default; another loss (class-weighted) is the one used."""
  default = _trained_with_loss(None)
  keras_spelling = _trained_with_loss(
      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  assert default.keys() == keras_spelling.keys()
  for name in default:
    np.testing.assert_array_equal(keras_spelling[name], default[name],
                                  err_msg=name)

  def class_weighted(labels, logits):
    weights = tf.gather(tf.constant([1.0, 5.0]), tf.cast(labels, tf.int32))
    losses = keras.losses.sparse_categorical_crossentropy(
        labels, logits, from_logits=True)
    return tf.reduce_sum(weights * losses) / tf.reduce_sum(weights)

  weighted = _trained_with_loss(class_weighted)
  moved = [n for n in default if not np.array_equal(weighted[n], default[n])]
  assert "output_weights" in moved and len(moved) > 10, moved


def _reference_features(vocab_file, pairs, max_seq_length):
  """The original toolkit's features of (text_a, text_b) pairs, by its
  Python tokenizer and truncation, padded to the longest."""
  tokenizer = tokenization.FullTokenizer(vocab_file, do_lower_case=True)
  rows = []
  for a, b in pairs:
    ta, tb = tokenizer.tokenize(a), tokenizer.tokenize(b) if b else []
    budget = max_seq_length - (3 if tb else 2)
    while len(ta) + len(tb) > budget:
      (ta if len(ta) > len(tb) else tb).pop()
    tokens = ["[CLS]"] + ta + ["[SEP]"] + (tb + ["[SEP]"] if tb else [])
    segments = [0] * (len(ta) + 2) + [1] * (len(tb) + 1 if tb else 0)
    rows.append((tokenizer.convert_tokens_to_ids(tokens), segments))
  width = max(len(ids) for ids, _ in rows)
  pad = lambda v: v + [0] * (width - len(v))  # noqa: E731
  return {"input_ids": np.array([pad(i) for i, _ in rows], np.int32),
          "input_mask": np.array([pad([1] * len(i)) for i, _ in rows],
                                 np.int32),
          "segment_ids": np.array([pad(s) for _, s in rows], np.int32)}


def test_predict_fit_and_evaluate_take_raw_strings(tmp_path):
  base = tiny_base(tmp_path)
  model = modeling.BertAdapterModel.from_pretrained(base, max_seq_length=9)
  model.add_adapter("a")
  model.add_classification_head("a", 2)
  model.set_active_adapters("a")
  model.compile()
  texts = ["the cat sat", "a dog ran fast!", "happy"]
  pairs = (["the red sun", "old moon"], ["sad green dogs", "new"])
  vocab = os.path.join(base, "vocab.txt")
  want = model.predict(_reference_features(
      vocab, [(t, "") for t in texts], 9), verbose=0)
  np.testing.assert_allclose(model.predict(texts, verbose=0), want,
                             atol=1e-6)
  want = model.predict(_reference_features(vocab, list(zip(*pairs)), 9),
                       verbose=0)
  np.testing.assert_allclose(model.predict(pairs, verbose=0), want,
                             atol=1e-6)
  model.train_adapter("a")
  model.compile(optimizer=optimization.create_optimizer(1e-2, 2, 0))
  before = all_values(model)
  model.fit(texts, np.array([0, 1, 1]), epochs=2, verbose=0)
  after = all_values(model)
  assert any(not np.array_equal(before[k], after[k]) for k in before)
  assert np.isfinite(model.evaluate(texts, np.array([0, 1, 1]), verbose=0))
  bare = modeling.BertAdapterModel(model.config)
  with pytest.raises(UserError, match="raw text needs a vocabulary"):
    bare.predict(texts)
