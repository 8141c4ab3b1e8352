"""The name map, TF1-layout save/load, and checkpoint error cases."""

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert import adapters
from adapter_bert.storage import checkpoint_io
from adapter_bert.model import modeling
from adapter_bert.errors import UserError
from test_modeling import features, mixed_batch, randomize, tiny_config

# Every name of a 1-layer model with adapters at both locations and a head,
# in order: the interface with Google's checkpoints and the reference toolkit.
GOLDEN_NAMES = [
    "bert/embeddings/word_embeddings",
    "bert/embeddings/token_type_embeddings",
    "bert/embeddings/position_embeddings",
    "bert/embeddings/LayerNorm/gamma",
    "bert/embeddings/LayerNorm/beta",
    "bert/encoder/layer_0/attention/self/query/kernel",
    "bert/encoder/layer_0/attention/self/query/bias",
    "bert/encoder/layer_0/attention/self/key/kernel",
    "bert/encoder/layer_0/attention/self/key/bias",
    "bert/encoder/layer_0/attention/self/value/kernel",
    "bert/encoder/layer_0/attention/self/value/bias",
    "bert/encoder/layer_0/attention/output/dense/kernel",
    "bert/encoder/layer_0/attention/output/dense/bias",
    "bert/encoder/layer_0/attention/output/adapters/weights1",
    "bert/encoder/layer_0/attention/output/adapters/biases1",
    "bert/encoder/layer_0/attention/output/adapters/weights2",
    "bert/encoder/layer_0/attention/output/adapters/biases2",
    "bert/encoder/layer_0/attention/output/LayerNorm/gamma",
    "bert/encoder/layer_0/attention/output/LayerNorm/beta",
    "bert/encoder/layer_0/intermediate/dense/kernel",
    "bert/encoder/layer_0/intermediate/dense/bias",
    "bert/encoder/layer_0/output/dense/kernel",
    "bert/encoder/layer_0/output/dense/bias",
    "bert/encoder/layer_0/output/adapters/weights1",
    "bert/encoder/layer_0/output/adapters/biases1",
    "bert/encoder/layer_0/output/adapters/weights2",
    "bert/encoder/layer_0/output/adapters/biases2",
    "bert/encoder/layer_0/output/LayerNorm/gamma",
    "bert/encoder/layer_0/output/LayerNorm/beta",
    "bert/pooler/dense/kernel",
    "bert/pooler/dense/bias",
    "output_weights",
    "output_bias",
]


def make_model(num_labels=2, adapter_size=4, layers=1, **cfg):
  return modeling.BertClassifier(
      tiny_config(num_hidden_layers=layers, **cfg), num_labels,
      adapters.AdapterConfig(size=adapter_size))


def test_golden_names_and_shapes():
  model = make_model(num_labels=3, adapter_size=4)
  name_map = checkpoint_io.checkpoint_name_map(model)
  assert list(name_map) == GOLDEN_NAMES
  shapes = {n: tuple(v.shape) for n, v in name_map.items()}
  assert shapes["bert/encoder/layer_0/attention/self/query/kernel"] == (16, 16)
  assert shapes["bert/encoder/layer_0/intermediate/dense/kernel"] == (16, 24)
  assert shapes["bert/encoder/layer_0/output/adapters/weights1"] == (16, 4)
  assert shapes["bert/encoder/layer_0/output/adapters/biases1"] == (1, 4)
  assert shapes["bert/encoder/layer_0/output/adapters/biases2"] == (1, 16)
  assert shapes["output_weights"] == (3, 16)
  assert shapes["output_bias"] == (3,)
  # Every variable of the view has exactly one name; the model's others are
  # the base's own LayerNorms (the adapter trains copies of them).
  assert len({id(v) for v in name_map.values()}) == len(name_map)
  base_view = model.view(adapters.composition.Branch()).checkpoint_variables()
  others = {id(v) for v in model.weights} - {id(v) for v in name_map.values()}
  assert others == {id(v) for v, tag in base_view.values()
                    if tag == modeling.BASE_LAYER_NORM}


def test_names_of_deeper_model_follow_pattern():
  names = list(checkpoint_io.checkpoint_name_map(make_model(layers=3)))
  for i in range(3):
    layer = [n for n in names if n.startswith("bert/encoder/layer_%d/" % i)]
    assert [n.replace("layer_%d" % i, "layer_0") for n in layer] == \
        [n for n in GOLDEN_NAMES if n.startswith("bert/encoder/layer_0/")]


def test_save_and_load_round_trip(tmp_path):
  model = make_model(layers=2, num_labels=3)
  randomize(model, seed=11)
  prefix = str(tmp_path / "ckpt" / "model.ckpt-7")
  checkpoint_io.save_checkpoint(prefix, checkpoint_io.checkpoint_name_map(model))
  reader = tf.train.load_checkpoint(prefix)
  assert sorted(reader.get_variable_to_shape_map()) == sorted(
      checkpoint_io.checkpoint_name_map(model))

  fresh = make_model(layers=2, num_labels=3)
  restored, missing = checkpoint_io.load_checkpoint(fresh, prefix)
  assert missing == [] and len(restored) == len(
      checkpoint_io.checkpoint_name_map(fresh))
  cfg = fresh.config
  ids, mask, segs = mixed_batch(cfg, [7, 2], seq=7)
  np.testing.assert_array_equal(model(features(ids, mask, segs)).numpy(),
                                fresh(features(ids, mask, segs)).numpy())


def test_checkpoint_state_file_and_directory_resolution(tmp_path):
  model = make_model()
  for step in (5, 10):
    prefix = str(tmp_path / ("model.ckpt-%d" % step))
    checkpoint_io.save_checkpoint(prefix, checkpoint_io.checkpoint_name_map(model))
  checkpoint_io.write_checkpoint_state(
      str(tmp_path), str(tmp_path / "model.ckpt-10"),
      [str(tmp_path / "model.ckpt-5"), str(tmp_path / "model.ckpt-10")])
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("model.ckpt-10")
  assert checkpoint_io.resolve_checkpoint_path(str(tmp_path)).endswith("model.ckpt-10")


def write_base_only(model, prefix, extra=None, drop=()):
  """A Google-style checkpoint: base variables only, plus optional extras."""
  tensors = {n: v for n, v in checkpoint_io.base_tensors(model).items()
             if n not in drop}
  tensors.update(extra or {})
  checkpoint_io.save_checkpoint(prefix, tensors)


def test_google_checkpoint_leaves_adapters_and_head_fresh(tmp_path, caplog):
  source = make_model(layers=2)
  randomize(source, seed=4)
  prefix = str(tmp_path / "bert_model.ckpt")
  slots = {n + "/adam_m": np.zeros(v.shape, np.float32)
           for n, v in checkpoint_io.checkpoint_name_map(source).items()}
  write_base_only(source, prefix, extra=dict(
      slots, global_step=np.int64(1234)))
  target = make_model(layers=2)
  before = {n: v.numpy() for n, v in checkpoint_io.checkpoint_name_map(target).items()}
  restored, fresh = checkpoint_io.load_checkpoint(target, prefix)
  assert sorted(fresh) == sorted(n for n in before
                                if n not in checkpoint_io.base_names(target))
  after = checkpoint_io.checkpoint_name_map(target)
  src = checkpoint_io.checkpoint_name_map(source)
  for name in before:
    if name in fresh:
      np.testing.assert_array_equal(after[name].numpy(), before[name])
    else:
      np.testing.assert_array_equal(after[name].numpy(), src[name].numpy())


def test_checkpoint_with_adapters_and_head_restores_them(tmp_path):
  source = make_model(layers=1)
  randomize(source, seed=8)
  prefix = str(tmp_path / "model.ckpt-3")
  tensors = dict(checkpoint_io.checkpoint_name_map(source))
  tensors["global_step"] = tf.constant(3, tf.int64)
  tensors["output_weights/adam_v"] = tf.zeros([2, 16])
  checkpoint_io.save_checkpoint(prefix, tensors)
  target = make_model(layers=1)
  _, fresh = checkpoint_io.load_checkpoint(target, prefix)
  assert fresh == []
  for name, v in checkpoint_io.checkpoint_name_map(target).items():
    np.testing.assert_array_equal(v.numpy(), tensors[name].numpy())


def test_shape_mismatch_is_a_clear_error_and_loads_nothing(tmp_path):
  source = make_model(hidden_size=32, intermediate_size=24)
  prefix = str(tmp_path / "bert_model.ckpt")
  write_base_only(source, prefix)
  target = make_model()
  before = [v.numpy() for v in target.weights]
  with pytest.raises(UserError) as e:
    checkpoint_io.load_checkpoint(target, prefix)
  message = str(e.value)
  assert "bert/embeddings/word_embeddings has shape [50, 32] in the checkpoint" in message
  assert "model expects [50, 16]" in message
  assert "\n" not in message
  for b, v in zip(before, target.weights):
    np.testing.assert_array_equal(b, v.numpy())


def test_head_with_other_label_count_is_a_clear_error(tmp_path):
  source = make_model(num_labels=3)
  prefix = str(tmp_path / "model.ckpt-1")
  checkpoint_io.save_checkpoint(prefix, checkpoint_io.checkpoint_name_map(source))
  with pytest.raises(UserError, match=r"output_weights has shape \[3, 16\].*expects \[2, 16\]"):
    checkpoint_io.load_checkpoint(make_model(num_labels=2), prefix)


def test_missing_base_variable_is_a_clear_error(tmp_path):
  source = make_model(layers=2)
  prefix = str(tmp_path / "bert_model.ckpt")
  write_base_only(source, prefix, drop=("bert/encoder/layer_1/output/dense/kernel",))
  with pytest.raises(UserError, match="1 model variable.*missing.*layer_1/output/dense/kernel"):
    checkpoint_io.load_checkpoint(make_model(layers=2), prefix)
  # A 1-layer checkpoint for a 2-layer model: missing base variables.
  small = str(tmp_path / "small" / "bert_model.ckpt")
  write_base_only(make_model(layers=1), small)
  with pytest.raises(UserError, match="16 model variable.*missing.*layer_1"):
    checkpoint_io.load_checkpoint(make_model(layers=2), small)


def test_missing_or_unreadable_checkpoint(tmp_path):
  model = make_model()
  with pytest.raises(UserError, match="--init_checkpoint=.*nothere.*no checkpoint there"):
    checkpoint_io.load_checkpoint(model, str(tmp_path / "nothere"))
  with pytest.raises(UserError, match="directory holds no checkpoint"):
    checkpoint_io.load_checkpoint(model, str(tmp_path))
  bad = tmp_path / "broken.ckpt"
  (tmp_path / "broken.ckpt.index").write_bytes(b"not a checkpoint")
  with pytest.raises(UserError, match="cannot read checkpoint"):
    checkpoint_io.load_checkpoint(model, str(bad))


def test_real_checkpoint_names_all_known(minilm_dir):
  import os
  cfg = modeling.BertConfig.from_json_file(os.path.join(minilm_dir, "bert_config.json"))
  model = modeling.BertClassifier(cfg, 2, adapters.AdapterConfig())
  in_ckpt = set(tf.train.load_checkpoint(
      os.path.join(minilm_dir, "bert_model.ckpt")).get_variable_to_shape_map())
  base = set(checkpoint_io.base_names(model))
  assert base == in_ckpt
