"""ReFT (adapters/reft.py): LoReFT, NoReFT, DiReFT against NumPy, the
orthonormal projection, positions, what trains, AdapterHub's files both
ways, the BERT-base counts."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert import adapters
from adapter_bert.adapters import reft
from adapter_bert.errors import UserError
from adapter_bert.model import modeling
from adapter_bert.storage import checkpoint_io
from hub_checks import adapterhub_reads_ours
from hub_checks import bert_base_counts
from hub_checks import needs_adapterhub
from hub_checks import needs_adapterhub_and_minilm
from hub_checks import ours_read_adapterhubs_on_the_minilm
import tiny_fixtures as fx
from test_methods import ACTS
from test_methods import as_features
from test_methods import batch
from test_methods import changed_by_fit
from test_methods import model_with
from test_methods import np_bert
from test_methods import weights
from test_huggingface import _adapterhub_logits

TINY = os.path.join(fx.REPO_ROOT, "tests", "data", "adapterhub_tiny")

CASES = {
    "loreft": "loreft",
    "noreft": "noreft",
    "direft": "direft",
    # Suffix positions (overlapping the prefix in short examples), rank 3,
    # one block, an activation.
    "loreft_r3_suffix_layer1_tanh": adapters.LoReftConfig(
        r=3, prefix_positions=2, suffix_positions=2, layers=[1],
        non_linearity="tanh"),
    "noreft_tied_suffix_only": adapters.NoReftConfig(
        prefix_positions=0, suffix_positions=3, tied_weights=True, r=2),
}


def np_householder(original, base):
  """torch's orthogonal map, one reflection at a time, rounded signs."""
  x = original.T
  hidden, r = x.shape
  q = np.eye(hidden)[:, :r]
  for i in reversed(range(r)):
    v = np.tril(x, -1)[:, i] + np.eye(hidden)[:, i]
    q = q - 2.0 * np.outer(v, v @ q) / (v @ v)
  return base @ (q * np.round(np.diag(x))[None])


def np_reft(c, w):
  """block_output_fn of np_bert: the units at their positions."""

  def edit(layer, x, mask):
    scope = "bert/encoder/layer_%d/output/reft/" % layer
    if scope + "unit_0/learned_source/kernel" not in w:
      return x
    lengths = mask.sum(axis=1)
    position = np.arange(x.shape[1])[None]
    prefix = position < c.prefix_positions
    suffix = ((position >= lengths[:, None] - c.suffix_positions)
              & (position < lengths[:, None]) & (c.suffix_positions > 0))

    def unit(k):
      u = scope + "unit_%d/" % k
      p = (np_householder(w[u + "projection/original"],
                          w[u + "projection/base"])
           if c.orthogonality else w[u + "projection/kernel"])
      act = ACTS[c.non_linearity] if c.non_linearity else (lambda t: t)
      source = act(x @ w[u + "learned_source/kernel"]
                   + w[u + "learned_source/bias"])
      if c.subtract_projection:
        source = source - x @ p
      return x + source @ p.T

    if c.tied_weights:
      return np.where((prefix | suffix)[..., None], unit(0), x)
    out = np.where(prefix[..., None], unit(0), x)
    return np.where(suffix[..., None], unit(1), out)

  return edit


def keep_signs(model):
  """Puts the diagonal of each `projection/original` back to +-1, as
  torch's parametrization keeps it (it never trains it)."""
  names = {n: v for adapter in model.adapters
           for n, v in model.adapter_view(adapter).checkpoint_name_map(
           ).items()}
  for name, v in names.items():
    if name.endswith("projection/original"):
      value = v.numpy()
      n = min(value.shape)
      value[np.arange(n), np.arange(n)] = np.sign(
          value[np.arange(n), np.arange(n)])
      v.assign(value)


def _model(case):
  model = model_with(CASES[case])
  keep_signs(model)
  return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_reft_matches_numpy(case):
  model = _model(case)
  c = model.adapters["a"]
  cfg = model.config
  ids, mask, segs = batch(cfg)
  got, _ = model.encode(as_features(ids, mask, segs))
  w = weights(model)
  want = np_bert(w, cfg, ids, mask, segs, c, block_output_fn=np_reft(c, w))
  assert np.max(np.abs(got.numpy() - want)) <= 1e-5
  plain = np_bert(w, cfg, ids, mask, segs, c)
  assert np.max(np.abs(plain - want)) > 1e-3
  # The classifier's path (only [CLS] computed in the last block) agrees.
  model.set_active_adapters("a")
  logits = model(as_features(ids, mask, segs)).numpy()
  pooled = np.tanh(want[:, 0] @ w["bert/pooler/dense/kernel"]
                   + w["bert/pooler/dense/bias"])
  np.testing.assert_allclose(
      logits, pooled @ w["output_weights"].T + w["output_bias"], atol=1e-5)


def test_the_orthogonal_projection_is_orthonormal_and_starts_at_base():
  rng = np.random.default_rng(0)
  original, base = reft._orthogonal_start(12, 3, seed=4)
  np.testing.assert_allclose(base @ base.T, np.eye(12), atol=1e-5)
  p = reft.householder_projection(tf.constant(original), tf.constant(base))
  np.testing.assert_allclose(p.numpy(), base[:, :3], atol=1e-6)
  moved = original + np.tril(rng.normal(size=(12, 3)), -1).T
  p = reft.householder_projection(tf.constant(moved, tf.float32),
                                  tf.constant(base)).numpy()
  np.testing.assert_allclose(p.T @ p, np.eye(3), atol=1e-5)
  np.testing.assert_allclose(p, np_householder(moved, base), atol=1e-5)
  # Above X's diagonal (originalᵀ) nothing counts; a decayed diagonal
  # keeps its sign.
  above = moved + np.tril(rng.normal(size=(3, 12)), -1)
  above[np.arange(3), np.arange(3)] = -0.97
  np.testing.assert_allclose(
      reft.householder_projection(tf.constant(above, tf.float32),
                                  tf.constant(base)).numpy(), p, atol=1e-6)


def test_fit_trains_the_units_not_the_base_matrix():
  model = _model("loreft_r3_suffix_layer1_tanh")
  trained = {n for n, _ in model.train_adapter("a")}
  names = checkpoint_io.checkpoint_name_map(model)
  reft_names = {n for n in names if "/reft/" in n}
  assert reft_names and trained == {
      n for n in reft_names if not n.endswith("/base")} | {
          "output_weights", "output_bias"}
  changed = changed_by_fit(model)
  # Every unit trains (prefix and suffix positions both exist here).
  assert changed == trained


def test_configs_as_adapterhub_writes_them():
  for name, cls in (("loreft", adapters.LoReftConfig),
                    ("noreft", adapters.NoReftConfig),
                    ("direft", adapters.DiReftConfig)):
    hub = dict(cls().to_dict(), architecture="reft")
    del hub["kind"]
    if name == "direft":  # AdapterHub's dict has no subtract_projection.
      del hub["subtract_projection"]
      assert adapters.config_from_dict(hub) == adapters.get_preset("noreft")
    else:
      assert adapters.config_from_dict(hub) == adapters.get_preset(name)
  for fields, message in (
      ({"layers": "some"}, "layers='some' is neither"),
      ({"prefix_positions": 0}, "nothing would be edited"),
      ({"r": 0}, "r=0 is out of range"),
      ({"dtype": "bfloat16"}, "dtype='bfloat16'"),
      ({"non_linearity": "mish"}, "non_linearity='mish'")):
    with pytest.raises(UserError, match=message):
      adapters.ReftConfig(**fields)
  with pytest.raises(UserError, match="needs r < the hidden size"):
    model_with(adapters.LoReftConfig(r=32))


@pytest.mark.parametrize("form", ["loreft", "loreft_safetensors", "noreft",
                                  "direft"])
def test_adapterhubs_reft_reproduces_its_logits(tiny_hub, form):
  # Saved by AdapterHub 1.3.0 (scripts/lab/make_adapterhub_fixtures.py):
  # suffix positions too, noise on every trained parameter; direft's
  # logits are AdapterHub's after it loads its own file back.
  model, features = tiny_hub
  method = form.split("_")[0]
  want = np.load(os.path.join(TINY, method + "_logits.npy"))
  name = model.load_adapter(os.path.join(TINY, form), load_as=form,
                            set_active=True)
  try:
    assert model.adapters[name].orthogonality == (method == "loreft")
    assert np.max(np.abs(model(features).numpy() - want)) <= 1e-4
  finally:
    model.delete_adapter(name)
    model.delete_head(name)


@needs_adapterhub
@pytest.mark.parametrize("case", ["loreft_r3_suffix_layer1_tanh",
                                  "noreft_tied_suffix_only"])
def test_adapterhub_loads_a_reft_written_here(case, tmp_path):
  assert adapterhub_reads_ours(CASES[case], tmp_path,
                               adjust=keep_signs) <= 1e-4


@needs_adapterhub
def test_adapterhub_reads_a_direft_written_here_as_noreft(tmp_path):
  # AdapterHub 1.3.0 makes every ReFT config it loads subtract h·P (its
  # subtract_projection is a class attribute, lost on loading): a DiReFT
  # file, its own or this one, runs there as NoReFT with DiReFT's weights.
  # Read that way here too, the logits agree.
  hf_dir = os.path.join(TINY, "hf")
  inputs = np.load(os.path.join(TINY, "inputs.npz"))
  features = {k: inputs[k].astype(np.int32) for k in inputs.files}
  model = modeling.BertAdapterModel.from_pretrained(hf_dir)
  model.add_adapter("t", "direft", set_active=True)
  model.add_classification_head("t", 2, layers=2, use_pooler=False)
  rng = np.random.default_rng(0)
  for _, (v, tag) in model.adapter_view("t").checkpoint_variables().items():
    if tag.kind in ("adapter", "head"):
      v.assign((v.numpy() + rng.normal(0, 0.3, v.shape)).astype(np.float32))
  directory = str(tmp_path / "direft")
  model.save_adapter(directory, "t", format="adapterhub")
  got = _adapterhub_logits({"hf_dir": hf_dir, "adapter_dir": directory},
                           tmp_path)
  assert np.max(np.abs(model(features).numpy() - got)) > 1e-3
  path = os.path.join(directory, "adapter_config.json")
  with open(path) as f:
    saved = json.load(f)
  del saved["config"]["subtract_projection"]
  with open(path, "w") as f:
    json.dump(saved, f)
  other = modeling.BertAdapterModel.from_pretrained(hf_dir)
  name = other.load_adapter(directory, set_active=True)
  assert other.adapters[name] == adapters.get_preset("noreft")
  assert np.max(np.abs(other(features).numpy() - got)) <= 1e-4


@needs_adapterhub_and_minilm
def test_adapterhubs_loreft_on_the_minilm_reproduces_its_logits(tmp_path):
  diffs = ours_read_adapterhubs_on_the_minilm(
      "loreft[suffix_positions=2,r=2]", tmp_path)
  assert max(diffs.values()) <= 1e-4, diffs


@pytest.mark.parametrize("name,count", [("loreft", 36_888),
                                        ("noreft", 36_888),
                                        ("direft", 36_888)])
def test_bert_base_count_equals_adapterhubs(name, count):
  # AdapterHub 1.3.0, BERT-base config, train_adapter: the requires-grad
  # parameters outside the head: 12 blocks x 2 units x (768 + 1 + 768);
  # LoReFT's frozen base (768 x 768 per unit) is a buffer there.
  assert bert_base_counts(name)["trained"] == count
