"""DVoRA (adapters/dvora.py): VeRA with DoRA's magnitude, against NumPy
and AdapterHub's files both ways, counts and configs."""

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
from test_methods import model_with
from test_methods import np_bert
from test_methods import np_gate
from test_methods import weights

TINY = os.path.join(fx.REPO_ROOT, "tests", "data", "adapterhub_tiny")
PAIR = ("bert/adapters/lora_A", "bert/adapters/lora_B")

CASES = {
    "dvora": "dvora",
    "qkv_rank4_alpha16_leave_out": adapters.DvoRAConfig(
        r=4, alpha=16, attn_matrices=["q", "k", "v"], leave_out=[0]),
    "intermediate_gated": adapters.DvoRAConfig(
        selfattn_lora=False, intermediate_lora=True, use_gating=True),
}


def np_dvora_projection(w):
  """(m / ||W + P||) * (x·W + b + x·P·alpha/r) with P = A·D·B·V (the gate
  in place of alpha/r where there is one)."""

  def projection(c, scope, x, point, mask):
    del point
    kernel = w[scope + "/kernel"]
    y = x @ kernel + w[scope + "/bias"]
    if scope + "/m" not in w:
      return y
    product = (w[PAIR[0]] @ w[scope + "/vera_D"] @ w[PAIR[1]]
               @ w[scope + "/vera_B"])
    delta = x @ product
    if c.use_gating:
      delta = delta * np_gate(w, scope + "/lora_gate", x, mask)[:, None, :]
    else:
      delta = delta * (c.alpha / c.r)
    norm = np.sqrt(((kernel + product) ** 2).sum(axis=0))
    return (y + delta) * (w[scope + "/m"] / norm)

  return projection


@pytest.mark.parametrize("case", sorted(CASES))
def test_dvora_matches_numpy(case):
  model = model_with(CASES[case])
  c = model.adapters["a"]
  cfg = model.config
  ids, mask, segs = batch(cfg)
  got, _ = model.encode(as_features(ids, mask, segs))
  w = weights(model)
  want = np_bert(w, cfg, ids, mask, segs, c,
                 projection_fn=np_dvora_projection(w))
  assert np.max(np.abs(got.numpy() - want)) <= 1e-5
  plain = {k: v for k, v in w.items() if not k.endswith("/m")}
  other = np_bert(plain, cfg, ids, mask, segs, c,
                  projection_fn=np_dvora_projection(plain))
  assert np.max(np.abs(other - want)) > 1e-3


def test_trains_scalings_and_magnitudes_not_the_pair_and_merges():
  model = model_with(CASES["qkv_rank4_alpha16_leave_out"])
  trained = {n for n, _ in model.train_adapter("a")}
  assert trained == {n for n in checkpoint_io.checkpoint_name_map(model)
                     if n.endswith(("/vera_D", "/vera_B", "/m"))} | {
                         "output_weights", "output_bias"}
  feats = as_features(*batch(model.config))
  before = {n: v.numpy() for n, v in checkpoint_io.checkpoint_name_map(
      model).items()}
  unmerged = model.predict(feats, verbose=0)
  model.merge_adapter("a")
  np.testing.assert_allclose(model.predict(feats, verbose=0), unmerged,
                             atol=1e-5)
  model.reset_adapter("a")
  for n, v in checkpoint_io.checkpoint_name_map(model).items():
    np.testing.assert_allclose(v.numpy(), before[n], atol=1e-5, err_msg=n)


@pytest.mark.parametrize("form", ["dvora", "dvora_safetensors"])
def test_adapterhubs_dvora_reproduces_its_logits(form):
  # Saved by AdapterHub 1.3.0 (scripts/lab/make_adapterhub_fixtures.py):
  # "dvora[alpha=16,r=4]", noise on every trained parameter.
  model = modeling.BertAdapterModel.from_pretrained(os.path.join(TINY, "hf"))
  inputs = np.load(os.path.join(TINY, "inputs.npz"))
  features = {k: inputs[k].astype(np.int32) for k in inputs.files}
  want = np.load(os.path.join(TINY, "dvora_logits.npy"))
  name = model.load_adapter(os.path.join(TINY, form), set_active=True)
  assert model.adapters[name] == adapters.DvoRAConfig(r=4, alpha=16)
  assert np.max(np.abs(model(features).numpy() - want)) <= 1e-4
  model.set_active_adapters(None)
  model.active_head = name
  assert np.max(np.abs(model(features).numpy() - want)) > 1e-3


@needs_adapterhub
def test_adapterhub_loads_a_dvora_written_here(tmp_path):
  assert adapterhub_reads_ours(CASES["qkv_rank4_alpha16_leave_out"],
                               tmp_path) <= 1e-4


@needs_adapterhub_and_minilm
def test_adapterhubs_dvora_on_the_minilm_reproduces_its_logits(tmp_path):
  # AdapterHub itself makes it on the MiniLM (bin and safetensors).
  diffs = ours_read_adapterhubs_on_the_minilm(
      "dvora[alpha=16,r=4]", tmp_path)
  assert max(diffs.values()) <= 1e-4, diffs


def test_bert_base_counts_equal_adapterhubs():
  # AdapterHub 1.3.0, BERT-base config, train_adapter with "dvora":
  # 14,175,744 parameters require grad outside the head (VeRA's
  # 14,157,312 and m, 12 x 2 x 768); the shared pair (12,288) is frozen.
  counts = bert_base_counts("dvora")
  assert (counts["trained"], counts["frozen"]) == (14_175_744, 12_288)


def test_configs_as_adapterhub_writes_them():
  hub = dict(adapters.DvoRAConfig().to_dict(), architecture="lora")
  del hub["kind"]
  assert registry.kind_of_dict(hub) == "dvora"
  assert adapters.config_from_dict(hub) == adapters.get_preset("dvora")
  assert registry.kind_of_dict(dict(hub, use_dora=False)) == "vera"
  with pytest.raises(UserError, match="vera adapter config: use_dora=True "
                     "makes it another method's config"):
    adapters.VeraConfig(use_dora=True)
  with pytest.raises(UserError, match="dvora adapter config: use_dora=False"):
    adapters.DvoRAConfig(use_dora=False)
