"""DoRA (adapters/dora.py): against NumPy, magnitudes from the base, merge,
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
from test_methods import weights

TINY = os.path.join(fx.REPO_ROOT, "tests", "data", "adapterhub_tiny")
QUERY = "bert/encoder/layer_0/attention/self/query/"

CASES = {
    "dora": "dora",
    "everywhere_rank4_alpha16_leave_out": adapters.DoRAConfig(
        r=4, alpha=16, attn_matrices=["q", "k", "v"], intermediate_lora=True,
        output_lora=True, leave_out=[0]),
    "intermediate_gated": adapters.DoRAConfig(
        selfattn_lora=False, intermediate_lora=True, use_gating=True),
}


def np_dora_projection(w):
  """(m / ||W + A·B||) * (x·W + b + x·A·B·alpha/r), the gate in place of
  alpha/r where there is one, on the projections holding DoRA's variables
  (AdapterHub's DoRA: the norm of each output's column, A·B unscaled)."""

  def projection(c, scope, x, point, mask):
    del point
    kernel = w[scope + "/kernel"]
    y = x @ kernel + w[scope + "/bias"]
    if scope + "/m" not in w:
      return y
    product = w[scope + "/lora_A"] @ w[scope + "/lora_B"]
    delta = x @ product
    if c.use_gating:
      delta = delta * np_gate(w, scope + "/lora_gate", x, mask)[:, None, :]
    else:
      delta = delta * (c.alpha / c.r)
    norm = np.sqrt(((kernel + product) ** 2).sum(axis=0))
    return (y + delta) * (w[scope + "/m"] / norm)

  return projection


@pytest.mark.parametrize("case", sorted(CASES))
def test_dora_matches_numpy(case):
  model = model_with(CASES[case])
  c = model.adapters["a"]
  cfg = model.config
  ids, mask, segs = batch(cfg)
  got, _ = model.encode(as_features(ids, mask, segs))
  w = weights(model)
  want = np_bert(w, cfg, ids, mask, segs, c,
                 projection_fn=np_dora_projection(w))
  assert np.max(np.abs(got.numpy() - want)) <= 1e-5
  plain = {k: v for k, v in w.items() if not k.endswith(("/m", "lora_A",
                                                          "lora_B"))}
  other = np_bert(plain, cfg, ids, mask, segs, c,
                  projection_fn=np_dora_projection(plain))
  assert np.max(np.abs(other - want)) > 1e-3


def test_magnitudes_start_from_the_base_and_restart_with_it(tmp_path):
  files = fx.write_model(str(tmp_path / "base"))
  model = modeling.BertAdapterModel.from_pretrained(
      files["bert_config_file"], vocab_file=files["vocab_file"],
      init_checkpoint=files["init_checkpoint"])
  model.add_adapter("d", "dora", set_active=True)
  names = model.adapter_view("d").checkpoint_name_map()

  def norms():
    return np.linalg.norm(names[QUERY + "kernel"].numpy(), axis=0)

  np.testing.assert_allclose(names[QUERY + "m"].numpy(), norms(), rtol=1e-6)
  # Added, B = 0: the adapter computes the base's function.
  feats = as_features(*batch(model.config))
  with_dora, _ = model.encode(feats)
  model.set_active_adapters(None)
  without, _ = model.encode(feats)
  np.testing.assert_allclose(with_dora.numpy(), without.numpy(), atol=1e-5)
  # Another base loaded: m follows it.
  for v in model.view(modeling.composition.Branch()).checkpoint_name_map(
  ).values():
    v.assign(v.numpy() * 2.0)
  model.load_base_checkpoint(files["init_checkpoint"])
  np.testing.assert_allclose(names[QUERY + "m"].numpy(), norms(), rtol=1e-6)


def test_fit_trains_a_b_and_m(tmp_path):
  model = model_with("dora")
  trained = {n for n, _ in model.train_adapter("a")}
  assert trained == {n for n in checkpoint_io.checkpoint_name_map(model)
                     if n.endswith(("/lora_A", "/lora_B", "/m"))} | {
                         "output_weights", "output_bias"}
  changed = changed_by_fit(model)
  ids, mask, segs = batch(model.config)
  assert changed == trained
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
  model = model_with(CASES["everywhere_rank4_alpha16_leave_out"])
  feats = as_features(*batch(model.config))
  before = {n: v.numpy() for n, v in checkpoint_io.checkpoint_name_map(
      model).items()}
  unmerged = model.predict(feats, verbose=0)
  model.merge_adapter("a")
  changed = {n for n, v in checkpoint_io.checkpoint_name_map(model).items()
             if not np.array_equal(v.numpy(), before[n])}
  # Kernels and biases (DoRA's scale takes the bias too) of layer 1 only.
  assert changed == {"bert/encoder/layer_1/%s/%s" % (p, v) for p in (
      "attention/self/query", "attention/self/key", "attention/self/value",
      "intermediate/dense", "output/dense") for v in ("kernel", "bias")}
  np.testing.assert_allclose(model.predict(feats, verbose=0), unmerged,
                             atol=1e-5)
  model.reset_adapter("a")
  for n, v in checkpoint_io.checkpoint_name_map(model).items():
    np.testing.assert_allclose(v.numpy(), before[n], atol=1e-5, err_msg=n)
  np.testing.assert_allclose(model.predict(feats, verbose=0), unmerged,
                             atol=1e-5)
  gated = model_with(CASES["intermediate_gated"])
  with pytest.raises(UserError, match="gated dora adapter"):
    gated.merge_adapter("a")


@pytest.mark.parametrize("form", ["dora", "dora_safetensors"])
def test_adapterhubs_dora_reproduces_its_logits(tiny_hub, form):
  # Saved by AdapterHub 1.3.0 (scripts/lab/make_adapterhub_fixtures.py):
  # "dora[alpha=16,r=4]", noise on every trained parameter.
  model, features = tiny_hub
  want = np.load(os.path.join(TINY, "dora_logits.npy"))
  name = model.load_adapter(os.path.join(TINY, form), load_as=form,
                            set_active=True)
  try:
    assert model.adapters[name] == adapters.DoRAConfig(r=4, alpha=16)
    got = model(features).numpy()
    assert np.max(np.abs(got - want)) <= 1e-4
    model.merge_adapter(name)
    assert np.max(np.abs(model(features).numpy() - want)) <= 1e-4
    model.reset_adapter(name)
    model.set_active_adapters(None)
    model.active_head = name
    assert np.max(np.abs(model(features).numpy() - want)) > 1e-3
  finally:
    model.delete_adapter(name)
    model.delete_head(name)


@needs_adapterhub
def test_adapterhub_loads_a_dora_written_here(tmp_path):
  assert adapterhub_reads_ours(CASES["everywhere_rank4_alpha16_leave_out"],
                               tmp_path) <= 1e-4


@needs_adapterhub_and_minilm
def test_adapterhubs_dora_on_the_minilm_reproduces_its_logits(tmp_path):
  # AdapterHub itself adds "dora[alpha=16,r=4,intermediate_lora=True]"
  # to the MiniLM (real biases: DoRA's scale takes them), noises what it
  # trains and saves it (bin and safetensors); loaded here, its logits.
  diffs = ours_read_adapterhubs_on_the_minilm(
      "dora[alpha=16,r=4,intermediate_lora=True]", tmp_path)
  assert max(diffs.values()) <= 1e-4, diffs


def test_bert_base_count_equals_adapterhubs():
  # AdapterHub 1.3.0, BERT-base config, train_adapter with config "dora":
  # 313,344 parameters require grad outside the head (LoRA's 294,912 and
  # m, 12 x 2 x 768).
  assert bert_base_counts("dora")["trained"] == 313_344


def test_configs_as_adapterhub_writes_them():
  hub = dict(adapters.DoRAConfig().to_dict(), architecture="lora")
  del hub["kind"]
  assert registry.kind_of_dict(hub) == "dora"
  assert adapters.config_from_dict(hub) == adapters.get_preset("dora")
  with pytest.raises(UserError, match="use_dora=True makes it another"):
    adapters.LoRAConfig(use_dora=True)
  with pytest.raises(UserError, match="use_dora=False is not one of True"):
    adapters.DoRAConfig(use_dora=False)
  with pytest.raises(UserError, match="vera_d=0.1 makes it another"):
    adapters.DoRAConfig(vera_d=0.1)
  with pytest.raises(UserError, match="init_weights='vera'"):
    adapters.DoRAConfig(init_weights="vera")
