"""Adapter+ (adapters/adapter_plus.py): against NumPy, stochastic depth,
what trains, AdapterHub's files both ways, the BERT-base count."""

import os

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert import adapters
from adapter_bert.adapters import bottleneck
from adapter_bert.adapters import gating
from adapter_bert.errors import UserError
from adapter_bert.model import modeling
from adapter_bert.storage import checkpoint_io
from hub_checks import adapterhub_reads_ours
from hub_checks import bert_base_counts
from hub_checks import needs_adapterhub
from hub_checks import needs_adapterhub_and_minilm
from hub_checks import ours_read_adapterhubs_on_the_minilm
import tiny_fixtures as fx
from test_methods import BERT_BASE
from test_methods import as_features
from test_methods import batch
from test_methods import changed_by_fit
from test_methods import check_against_numpy
from test_methods import model_with

TINY = os.path.join(fx.REPO_ROOT, "tests", "data", "adapterhub_tiny")

CASES = {
    "adapter_plus": "adapter_plus",
    "both_places_rf4_leave_out": adapters.AdapterPlusConfig(
        reduction_factor=4, mh_adapter=True, leave_out=[1]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_adapter_plus_matches_numpy(case):
  # np_bn with original_ln_after=False: LN(h + r) + s * up(LN(h + r)) is
  # the block's output, no LayerNorm after it.
  reference, w, want, c = check_against_numpy(CASES[case])
  assert not c.original_ln_after and c.scaling == "channel"
  plain = {k: v for k, v in w.items() if "adapters/" not in k}
  assert np.max(np.abs(reference(plain) - want)) > 1e-3


def test_the_defaults_are_adapterhubs():
  # AdapterHub 1.3.0's AdapterPlusConfig().to_dict(), read in its own
  # environment: the fields that differ from BnConfig's defaults.
  c = adapters.AdapterPlusConfig()
  differ = {k: v for k, v in c.to_dict().items()
            if adapters.BnConfig().to_dict()[k] != v}
  assert differ == {"original_ln_after": False, "residual_before_ln": False,
                    "stochastic_depth": 0.1, "init_weights": "houlsby",
                    "scaling": "channel", "reduction_factor": 96,
                    "non_linearity": "gelu"}
  # Saved, it reads back as the plain bottleneck config, and is equal.
  assert adapters.config_from_dict(c.to_dict()) == c
  assert adapters.get_preset("adapter_plus") == c
  with pytest.raises(UserError, match="stochastic_depth=1.0 is out of range"):
    adapters.AdapterPlusConfig(stochastic_depth=1.0)


def _layer(config, hidden=8):
  layer = bottleneck.BnAdapter(config, 4, name="ffn_output")
  layer.build((None, hidden))
  rng = np.random.default_rng(0)
  for v in layer.weights:
    v.assign(rng.normal(0.0, 0.5, v.shape).astype(np.float32))
  return layer


def test_stochastic_depth_drops_whole_examples_while_training():
  p = 0.3
  layer = _layer(adapters.AdapterPlusConfig(stochastic_depth=p))
  examples, seq, hidden = 64, 3, 8
  x = tf.constant(np.random.default_rng(1).normal(
      size=(examples * seq, hidden)), tf.float32)
  tokens = gating.TokenLayout(tf.constant(examples), tf.constant(seq),
                              tf.ones([examples, seq]))
  full = layer.bottleneck(x, training=False, tokens=tokens).numpy()
  dropped = 0
  for _ in range(20):
    up = layer.bottleneck(x, training=True, tokens=tokens).numpy()
    up = up.reshape(examples, seq, hidden)
    ref = full.reshape(examples, seq, hidden)
    zero = np.all(up == 0.0, axis=(1, 2))
    np.testing.assert_allclose(up[~zero], ref[~zero] / (1.0 - p), rtol=1e-5)
    dropped += int(zero.sum())
  # 1280 draws at p = 0.3: 384 expected, standard deviation 16.4.
  assert 384 - 5 * 16.4 < dropped < 384 + 5 * 16.4
  # Rows of fewer positions per example (output_range's first k): the
  # same whole-example masks.
  two = layer.bottleneck(x[:examples * 2], training=True, tokens=tokens)
  two = two.numpy().reshape(examples, 2, hidden)
  zero = np.all(two == 0.0, axis=2)
  assert np.array_equal(zero[:, 0], zero[:, 1])
  # Eval: no randomness.
  np.testing.assert_array_equal(
      layer.bottleneck(x, training=False, tokens=tokens).numpy(), full)


def test_a_parallel_adapter_has_no_stochastic_depth():
  # AdapterHub's ParallelAdapter.forward leaves DropPath out.
  layer = _layer(adapters.BnConfig(is_parallel=True, original_ln_before=False,
                                   stochastic_depth=0.5))
  x = tf.ones([6, 8])
  tokens = gating.TokenLayout(tf.constant(2), tf.constant(3), tf.ones([2, 3]))
  np.testing.assert_array_equal(
      layer.bottleneck(x, training=True, tokens=tokens).numpy(),
      layer.bottleneck(x, training=False, tokens=tokens).numpy())


def test_fit_trains_the_bottlenecks_and_scalings_only():
  model = model_with(CASES["both_places_rf4_leave_out"])
  trained = {n for n, _ in model.train_adapter("a")}
  names = checkpoint_io.checkpoint_name_map(model)
  assert trained == {n for n in names if "/adapters/" in n} | {
      "output_weights", "output_bias"}
  assert {n.rsplit("/", 1)[1] for n in trained if "/adapters/" in n} == {
      "weights1", "biases1", "weights2", "biases2", "scaling"}
  changed = changed_by_fit(model)
  assert changed == trained


def test_houlsby_initialisation():
  model = modeling.BertAdapterModel(modeling.BertConfig(**dict(
      BERT_BASE, num_hidden_layers=1)))
  model.add_adapter("p", "adapter_plus")
  names = model.adapter_view("p").checkpoint_name_map()
  scope = "bert/encoder/layer_0/output/adapters/"
  w1 = names[scope + "weights1"].numpy()
  assert w1.shape == (768, 8)
  assert np.max(np.abs(w1)) <= 2e-2 and 0.005 < w1.std() < 0.01
  assert not names[scope + "biases2"].numpy().any()
  np.testing.assert_array_equal(names[scope + "scaling"].numpy(),
                                np.ones(768))


@pytest.mark.parametrize("form", ["adapter_plus", "adapter_plus_safetensors"])
def test_adapterhubs_adapter_plus_reproduces_its_logits(tiny_hub, form):
  # Saved by AdapterHub 1.3.0 (scripts/lab/make_adapterhub_fixtures.py):
  # AdapterPlusConfig(reduction_factor=4, mh_adapter=True), noise on every
  # trained parameter.
  model, features = tiny_hub
  want = np.load(os.path.join(TINY, "adapter_plus_logits.npy"))
  name = model.load_adapter(os.path.join(TINY, form), load_as=form,
                            set_active=True)
  try:
    assert model.adapters[name] == adapters.AdapterPlusConfig(
        reduction_factor=4, mh_adapter=True)
    assert np.max(np.abs(model(features).numpy() - want)) <= 1e-4
  finally:
    model.delete_adapter(name)
    model.delete_head(name)


@needs_adapterhub
def test_adapterhub_loads_an_adapter_plus_written_here(tmp_path):
  assert adapterhub_reads_ours(CASES["both_places_rf4_leave_out"],
                               tmp_path) <= 1e-4


@needs_adapterhub_and_minilm
def test_adapterhubs_adapter_plus_on_the_minilm_reproduces_its_logits(
    tmp_path):
  diffs = ours_read_adapterhubs_on_the_minilm(
      {"class": "AdapterPlusConfig", "mh_adapter": True}, tmp_path)
  assert max(diffs.values()) <= 1e-4, diffs


def test_bert_base_count_equals_adapterhubs():
  # AdapterHub 1.3.0, BERT-base config, AdapterPlusConfig(), train_adapter:
  # 165,984 parameters require grad outside the head:
  # 12 x (768*8 + 8 + 8*768 + 768 + 768 scaling).
  assert bert_base_counts("adapter_plus")["trained"] == 165_984


def test_side_by_side_and_stacked_with_an_adapter_the_layernorm_follows():
  # Parallel: each branch as if alone (Adapter+'s branch skips the block's
  # LayerNorm after the adapter, pfeiffer's does not). Stack: the last
  # adapter decides, as in AdapterHub (its original_ln_after).
  model = model_with(CASES["both_places_rf4_leave_out"])
  model.add_adapter("q", "pfeiffer")
  model.add_classification_head("q", num_labels=3)
  rng = np.random.default_rng(2)
  for n, v in model.adapter_view("q").checkpoint_name_map().items():
    if "/adapters/" in n or n.startswith("output_"):
      v.assign(rng.normal(0.0, 0.3, v.shape).astype(np.float32))
  features = as_features(*batch(model.config))
  alone = {}
  for name in ("a", "q"):
    model.set_active_adapters(name)
    alone[name] = model(features).numpy()
  model.set_active_adapters(adapters.Parallel("a", "q"))
  both = model(features)
  for name in ("a", "q"):
    np.testing.assert_allclose(both[name].numpy(), alone[name], atol=1e-5)
  for stack, last in ((adapters.Stack("q", "a"), "a"),
                      (adapters.Stack("a", "q"), "q")):
    model.set_active_adapters(stack)
    block = model.bert.blocks[0]
    assert block.ffn_output.returns_block_output(
        model.active_setup()) == ((last == "a"),)
