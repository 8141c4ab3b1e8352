"""VeRA (adapters/vera.py): against NumPy, frozen shared pair, merge,
AdapterHub's files both ways, counts and configs."""

import os

import numpy as np
import pytest

from adapter_bert import adapters
from adapter_bert.adapters import registry
from adapter_bert.errors import UserError
from adapter_bert.model import modeling
from adapter_bert.storage import checkpoint_io
from hub_checks import adapterhub_reads_ours
from hub_checks import bert_base_counts
from hub_checks import needs_adapterhub
from hub_checks import needs_adapterhub_and_minilm
from hub_checks import ours_read_adapterhubs_on_the_minilm
import tiny_fixtures as fx
from test_methods import as_features
from test_methods import batch
from test_methods import changed_by_fit
from test_methods import model_with
from test_methods import np_bert
from test_methods import np_gate
from test_methods import tiny_config
from test_methods import weights

TINY = os.path.join(fx.REPO_ROOT, "tests", "data", "adapterhub_tiny")
PAIR = ("bert/adapters/lora_A", "bert/adapters/lora_B")

CASES = {
    "vera": "vera",
    "qkv_rank4_alpha16_leave_out": adapters.VeraConfig(
        r=4, alpha=16, attn_matrices=["q", "k", "v"], leave_out=[0]),
    "intermediate_gated": adapters.VeraConfig(
        selfattn_lora=False, intermediate_lora=True, use_gating=True, r=4),
    "output_only": adapters.VeraConfig(selfattn_lora=False, output_lora=True),
}


def np_vera_projection(w):
  """x·W + b + x·A·D·B·V·alpha/r (or the gate in place of alpha/r), on the
  projections holding VeRA's variables."""

  def projection(c, scope, x, point, mask):
    del point
    y = x @ w[scope + "/kernel"] + w[scope + "/bias"]
    if scope + "/vera_D" not in w:
      return y
    delta = (x @ w[PAIR[0]] @ w[scope + "/vera_D"] @ w[PAIR[1]]
             @ w[scope + "/vera_B"])
    if c.use_gating:
      return y + delta * np_gate(w, scope + "/lora_gate", x, mask)[:, None, :]
    return y + delta * (c.alpha / c.r)

  return projection


@pytest.mark.parametrize("case", sorted(CASES))
def test_vera_matches_numpy(case):
  model = model_with(CASES[case])
  c = model.adapters["a"]
  cfg = model.config
  ids, mask, segs = batch(cfg)
  got, _ = model.encode(as_features(ids, mask, segs))
  w = weights(model)
  want = np_bert(w, cfg, ids, mask, segs, c,
                 projection_fn=np_vera_projection(w))
  assert np.max(np.abs(got.numpy() - want)) <= 1e-5
  # VeRA's variables count: without them the output is another.
  plain = {k: v for k, v in w.items() if "vera_" not in k}
  other = np_bert(plain, cfg, ids, mask, segs, c,
                  projection_fn=np_vera_projection(plain))
  assert np.max(np.abs(other - want)) > 1e-3


def test_the_shared_pair_is_one_frozen_seeded_pair():
  model = modeling.BertAdapterModel(tiny_config())
  seeded = adapters.VeraConfig(init_weights_seed=7)
  for name in ("a", "b", "c"):
    model.add_adapter(name, seeded if name != "c" else "vera")
  pairs = {n: [model.adapter_view(n).checkpoint_name_map()[k].numpy()
               for k in PAIR] for n in ("a", "b", "c")}
  # One pair per adapter, shared by all its projections; a seed draws the
  # same pair again.
  for k in range(2):
    np.testing.assert_array_equal(pairs["a"][k], pairs["b"][k])
    assert not np.array_equal(pairs["a"][k], pairs["c"][k])
  h, r = model.config.hidden_size, 8
  a, b = pairs["a"]
  assert a.shape == (h, r) and b.shape == (r, h)
  # init_weights "vera": torch's kaiming_uniform_, bound sqrt(6 / fan_in).
  assert np.abs(a).max() <= np.sqrt(6.0 / h) and np.abs(b).max() <= np.sqrt(
      6.0 / r)
  assert np.abs(a).max() > 0.8 * np.sqrt(6.0 / h)
  view = model.adapter_view("a")
  for mode in ("adapters", "full"):
    assert not set(PAIR) & set(view.trainable_names(mode))
  d = view.checkpoint_name_map()[
      "bert/encoder/layer_0/attention/self/query/vera_D"].numpy()
  np.testing.assert_allclose(d, 0.1 * np.eye(r))
  assert not view.checkpoint_name_map()[
      "bert/encoder/layer_0/attention/self/value/vera_B"].numpy().any()


def test_fit_trains_the_scalings_and_never_the_pair(tmp_path):
  model = model_with("vera")
  trained = {n for n, _ in model.train_adapter("a")}
  assert trained == {n for n in checkpoint_io.checkpoint_name_map(model)
                     if "/vera_" in n} | {"output_weights", "output_bias"}
  changed = changed_by_fit(model)
  ids, mask, segs = batch(model.config)
  assert changed == trained
  # Saved and loaded back, the pair comes with the adapter.
  out = str(tmp_path / "adapter")
  model.save_adapter(out, "a")
  want = model.predict(as_features(ids, mask, segs), verbose=0)
  model.delete_adapter("a")
  model.delete_head("a")
  model.load_adapter(out, load_as="a", set_active=True)
  np.testing.assert_allclose(
      model.predict(as_features(ids, mask, segs), verbose=0), want,
      atol=1e-6)


def test_merged_predicts_what_unmerged_does():
  model = model_with(CASES["qkv_rank4_alpha16_leave_out"])
  feats = as_features(*batch(model.config))
  before = {n: v.numpy() for n, v in checkpoint_io.checkpoint_name_map(
      model).items()}
  unmerged = model.predict(feats, verbose=0)
  model.merge_adapter("a")
  changed = {n for n, v in checkpoint_io.checkpoint_name_map(model).items()
             if not np.array_equal(v.numpy(), before[n])}
  assert changed == {"bert/encoder/layer_1/attention/self/%s/kernel" % p
                     for p in ("query", "key", "value")}
  np.testing.assert_allclose(model.predict(feats, verbose=0), unmerged,
                             atol=1e-5)
  model.reset_adapter("a")
  for n, v in checkpoint_io.checkpoint_name_map(model).items():
    np.testing.assert_allclose(v.numpy(), before[n], atol=1e-6, err_msg=n)
  gated = model_with(CASES["intermediate_gated"])
  with pytest.raises(UserError, match="gated VeRA"):
    gated.merge_adapter("a")


@pytest.mark.parametrize("form", ["vera", "vera_safetensors"])
def test_adapterhubs_vera_reproduces_its_logits(tiny_hub, form):
  # Saved by AdapterHub 1.3.0 (scripts/lab/make_adapterhub_fixtures.py),
  # noise on every trained parameter: vera_D and vera_B are full matrices
  # there, no longer diagonal.
  model, features = tiny_hub
  want = np.load(os.path.join(TINY, "vera_logits.npy"))
  name = model.load_adapter(os.path.join(TINY, form), load_as=form,
                            set_active=True)
  try:
    assert isinstance(model.adapters[name], adapters.VeraConfig)
    d = model.adapter_view(name).checkpoint_name_map()[
        "bert/encoder/layer_0/attention/self/query/vera_D"].numpy()
    assert np.abs(d - np.diag(np.diag(d))).max() > 1e-3
    got = model(features).numpy()
    assert np.max(np.abs(got - want)) <= 1e-4
    model.merge_adapter(name)
    assert np.max(np.abs(model(features).numpy() - want)) <= 1e-4
    model.reset_adapter(name)
    # The adapter matters: its head on the plain base predicts otherwise.
    model.set_active_adapters(None)
    model.active_head = name
    assert np.max(np.abs(model(features).numpy() - want)) > 1e-3
  finally:
    model.delete_adapter(name)
    model.delete_head(name)


@needs_adapterhub
def test_adapterhub_loads_a_vera_written_here(tmp_path):
  assert adapterhub_reads_ours(CASES["qkv_rank4_alpha16_leave_out"],
                               tmp_path) <= 1e-4


def test_bert_base_counts_equal_adapterhubs():
  # AdapterHub 1.3.0 on the BERT-base config, `train_adapter("v")` with
  # config "vera": 14,157,312 parameters require grad outside the head
  # (12 x 2 x (8*8 + 768*768)); its adapter_summary also counts the frozen
  # shared pair, 8*768 + 768*8 = 12,288 more.
  counts = bert_base_counts("vera")
  assert (counts["trained"], counts["frozen"]) == (14_157_312, 12_288)


def test_configs_as_adapterhub_writes_them():
  hub = dict(adapters.VeraConfig().to_dict(), architecture="lora")
  del hub["kind"]
  assert registry.kind_of_dict(hub) == "vera"
  assert adapters.config_from_dict(hub) == adapters.get_preset("vera")
  lora = dict(adapters.LoRAConfig().to_dict(), architecture="lora")
  del lora["kind"]
  assert adapters.config_from_dict(lora) == adapters.LoRAConfig()
  # AdapterHub's test is a float vera_d or vera_b.
  assert registry.kind_of_dict(dict(lora, vera_b=0.0)) == "vera"
  with pytest.raises(UserError, match="vera_d=0.1 makes it another method"):
    adapters.LoRAConfig(vera_d=0.1)
  with pytest.raises(UserError, match="composition_mode='scale'"):
    adapters.VeraConfig(composition_mode="scale")
  with pytest.raises(UserError, match="use_dora=True"):
    adapters.VeraConfig(use_dora=True)
  with pytest.raises(UserError, match="vera_b=None"):
    adapters.VeraConfig(vera_b=None)
  model = modeling.BertAdapterModel(tiny_config())
  with pytest.raises(UserError, match=r"shared A and B serve every "
                     r"projection, but query is \[16 -> 16\], value is "
                     r"\[16 -> 16\], intermediate_projection is \[16 -> 24\]"):
    model.add_adapter("x", adapters.VeraConfig(intermediate_lora=True))
  assert "x" not in model.adapters


@needs_adapterhub_and_minilm
def test_adapterhubs_vera_on_the_minilm_reproduces_its_logits(tmp_path):
  # AdapterHub 1.3.0 itself adds "vera" with its head to the shared MiniLM
  # (Hugging Face form), puts noise on what it trains, saves it (bin and
  # safetensors) and computes logits; loaded here, the same logits.
  diffs = ours_read_adapterhubs_on_the_minilm(
      "vera", tmp_path)
  assert max(diffs.values()) <= 1e-4, diffs
