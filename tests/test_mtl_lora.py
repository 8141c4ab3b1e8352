"""MTL-LoRA (adapters/mtl_lora.py): against NumPy, merge, tasks sharing A
and B under MultiTask, AdapterHub's files both ways, counts and configs."""

import os

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert import adapters
from adapter_bert.adapters import registry
from adapter_bert.adapters.composition import MultiTask
from adapter_bert.compute import optimization
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
from test_modeling import tiny_config
from test_methods import weights

TINY = os.path.join(fx.REPO_ROOT, "tests", "data", "adapterhub_tiny")
HUB_CONFIG = adapters.MTLLoRAConfig(r=4, alpha=16, n_up_projection=2,
                                    intermediate_lora=True)

CASES = {
    "mtl_lora": "mtl_lora",
    "linear_three_up_everywhere_leave_out": adapters.MTLLoRAConfig(
        r=4, alpha=16, n_up_projection=3, task_specific_matrix_type="linear",
        attn_matrices=["q", "k", "v"], intermediate_lora=True,
        output_lora=True, leave_out=[0], weights_sharpness=0.5),
    "intermediate_gated": adapters.MTLLoRAConfig(
        selfattn_lora=False, intermediate_lora=True, use_gating=True,
        n_up_projection=2),
}


def np_up(w, scope, c):
  """T·(sum_k p_k·B_k), p = exp(w / s) / sum(exp(w / s)) as AdapterHub
  writes it."""
  e = np.exp(w[scope + "/weights"] / c.weights_sharpness)
  b = np.tensordot(e / e.sum(), w[scope + "/lora_B"], axes=1)  # [r, out]
  t = w[scope + "/task_specific/values"]
  return (np.diag(t) if t.ndim == 1 else t) @ b


def np_mtl_projection(w):
  """x·W + b + x·A·T·B̄·alpha/r (the gate in place of alpha/r where there is
  one) on the projections holding MTL-LoRA's variables."""

  def projection(c, scope, x, point, mask):
    del point
    y = x @ w[scope + "/kernel"] + w[scope + "/bias"]
    if scope + "/lora_A" not in w:
      return y
    delta = x @ w[scope + "/lora_A"] @ np_up(w, scope, c)
    if c.use_gating:
      return y + delta * np_gate(w, scope + "/lora_gate", x, mask)[:, None, :]
    return y + delta * (c.alpha / c.r)

  return projection


@pytest.mark.parametrize("case", sorted(CASES))
def test_mtl_lora_matches_numpy(case):
  model = model_with(CASES[case])
  c = model.adapters["a"]
  cfg = model.config
  ids, mask, segs = batch(cfg)
  got, _ = model.encode(as_features(ids, mask, segs))
  w = weights(model)
  want = np_bert(w, cfg, ids, mask, segs, c,
                 projection_fn=np_mtl_projection(w))
  assert np.max(np.abs(got.numpy() - want)) <= 1e-5
  # The task-specific matrix matters, and the weights where there are
  # several up projections.
  parts = ["/task_specific/values"] + (["/weights"] if c.n_up_projection > 1
                                       else [])
  for part in parts:
    other = dict(w)
    for k in w:
      if k.endswith(part):
        other[k] = w[k] * 1.5 + 0.1
    moved = np_bert(other, cfg, ids, mask, segs, c,
                    projection_fn=np_mtl_projection(other))
    assert np.max(np.abs(moved - want)) > 1e-3, part


def test_fit_trains_every_part_and_round_trips(tmp_path):
  model = model_with("mtl_lora")
  trained = {n for n, _ in model.train_adapter("a")}
  assert trained == {n for n in checkpoint_io.checkpoint_name_map(model)
                     if n.endswith(("/lora_A", "/lora_B", "/values",
                                    "/weights"))} | {
                         "output_weights", "output_bias"}
  assert changed_by_fit(model) == trained
  feats = as_features(*batch(model.config))
  want = model.predict(feats, verbose=0)
  out = str(tmp_path / "adapter")
  model.save_adapter(out, "a")
  model.delete_adapter("a")
  model.delete_head("a")
  model.load_adapter(out, load_as="a", set_active=True)
  np.testing.assert_allclose(model.predict(feats, verbose=0), want, atol=1e-6)


def test_merged_predicts_what_unmerged_does():
  model = model_with(CASES["linear_three_up_everywhere_leave_out"])
  feats = as_features(*batch(model.config))
  before = {n: v.numpy() for n, v in checkpoint_io.checkpoint_name_map(
      model).items()}
  unmerged = model.predict(feats, verbose=0)
  model.merge_adapter("a")
  changed = {n for n, v in checkpoint_io.checkpoint_name_map(model).items()
             if not np.array_equal(v.numpy(), before[n])}
  assert changed == {"bert/encoder/layer_1/%s/kernel" % p for p in (
      "attention/self/query", "attention/self/key", "attention/self/value",
      "intermediate/dense", "output/dense")}
  np.testing.assert_allclose(model.predict(feats, verbose=0), unmerged,
                             atol=1e-5)
  model.reset_adapter("a")
  for n, v in checkpoint_io.checkpoint_name_map(model).items():
    np.testing.assert_allclose(v.numpy(), before[n], atol=1e-5, err_msg=n)
  with pytest.raises(UserError, match="gated mtl_lora adapter"):
    model_with(CASES["intermediate_gated"]).merge_adapter("a")


def two_tasks():
  """Two mtl_lora adapters t0, t1 (heads of 3 labels) on the tiny base."""
  model = modeling.BertAdapterModel(tiny_config())
  for name in ("t0", "t1"):
    model.add_adapter(name, HUB_CONFIG)
    model.add_classification_head(name, num_labels=3)
  return model


def test_shared_tasks_train_one_a_and_b():
  model = two_tasks()
  query = "bert/encoder/layer_0/attention/self/query/"

  def variable(name, part):
    return model.adapter_view(name).checkpoint_name_map()[query + part]

  own_t1 = variable("t1", "lora_A")
  model.share_parameters(MultiTask("t0", "t1"))
  assert variable("t1", "lora_A") is variable("t0", "lora_A")
  assert variable("t1", "lora_B") is variable("t0", "lora_B")
  assert variable("t1", "weights") is not variable("t0", "weights")
  trained = model.train_adapter(MultiTask("t0", "t1"))
  cfg, c = model.config, HUB_CONFIG
  places = [(cfg.hidden_size, cfg.hidden_size)] * 2 + [
      (cfg.hidden_size, cfg.intermediate_size)]
  shared = sum(i * c.r + c.n_up_projection * c.r * o for i, o in places)
  own = len(places) * (c.r + c.n_up_projection)
  heads = 2 * (cfg.hidden_size * 3 + 3)
  assert sum(int(np.prod(v.shape)) for _, v in trained) == (
      cfg.num_hidden_layers * (shared + 2 * own) + heads)
  # One step on a batch mixing the tasks moves the shared A and each
  # task's own parts.
  before = {(n, p): variable(n, p).numpy().copy() for n in ("t0", "t1")
            for p in ("lora_A", "task_specific/values")}
  ids, mask, segs = batch(cfg)
  feats = dict(as_features(ids, mask, segs),
               task_ids=tf.constant([0, 1, 1, 0]))
  model.compile(optimizer=optimization.create_optimizer(1e-2, 3, 1), seed=1)
  data = tf.data.Dataset.from_tensors((feats, np.array([0, 1, 2, 1])))
  model.fit(data, epochs=2, verbose=0)
  for key, value in before.items():
    assert not np.array_equal(variable(*key).numpy(), value), key
  np.testing.assert_array_equal(variable("t0", "lora_A").numpy(),
                                variable("t1", "lora_A").numpy())
  # Unshared: t1 its own A again, from the shared values.
  model.unshare_parameters(MultiTask("t0", "t1"))
  assert variable("t1", "lora_A") is own_t1
  np.testing.assert_array_equal(own_t1.numpy(),
                                variable("t0", "lora_A").numpy())
  model.add_adapter("plain", "lora")
  with pytest.raises(UserError, match=r"'plain' \(lora\) cannot share"):
    model.share_parameters(["t0", "plain"])
  with pytest.raises(UserError, match="reference adapter 'x' is not among"):
    model.share_parameters("t0,t1", reference_adapter_name="x")
  model.add_adapter("small", adapters.MTLLoRAConfig(r=2))
  with pytest.raises(UserError, match="not of one method on the same"):
    model.share_parameters(["t0", "small"])


@pytest.mark.parametrize("form", ["mtl_lora", "mtl_lora_safetensors"])
def test_adapterhubs_mtl_lora_reproduces_its_logits(tiny_hub, form):
  # Saved by AdapterHub 1.3.0 (scripts/lab/make_adapterhub_fixtures.py):
  # "mtl_lora[alpha=16,r=4,n_up_projection=2,intermediate_lora=True]",
  # noise on every trained parameter.
  model, features = tiny_hub
  want = np.load(os.path.join(TINY, "mtl_lora_logits.npy"))
  name = model.load_adapter(os.path.join(TINY, form), load_as=form,
                            set_active=True)
  try:
    assert model.adapters[name] == HUB_CONFIG
    assert np.max(np.abs(model(features).numpy() - want)) <= 1e-4
    model.merge_adapter(name)
    assert np.max(np.abs(model(features).numpy() - want)) <= 1e-4
    model.reset_adapter(name)
    model.set_active_adapters(None)
    model.active_head = name
    assert np.max(np.abs(model(features).numpy() - want)) > 1e-3
  finally:
    model.delete_adapter(name)
    model.delete_head(name)


def test_adapterhubs_shared_tasks_reproduce_its_hidden_states(tiny_hub):
  # AdapterHub 1.3.0: two such adapters, share_parameters(MultiTask(t0,
  # t1)), noise on what train_adapter(MultiTask) trains (1,480 values: the
  # shared A and B once), the encoder's output with task_ids 0, 1, 0, 1.
  model, features = tiny_hub
  where = os.path.join(TINY, "mtl_multitask")
  want = np.load(os.path.join(where, "hidden.npy"))
  task_ids = np.load(os.path.join(where, "task_ids.npy"))
  for name in ("t0", "t1"):
    model.load_adapter(os.path.join(where, name), load_as=name)
  try:
    model.share_parameters(MultiTask("t0", "t1"))
    for name in ("t0", "t1"):
      model.add_classification_head(name, num_labels=2)
    trained = model.train_adapter(MultiTask("t0", "t1"))
    assert sum(int(np.prod(v.shape)) for k, v in trained
               if not k.startswith("output_")) == 1480
    for t, name in enumerate(("t0", "t1")):
      model.set_active_adapters(name)
      rows = task_ids == t
      got, _ = model.encode({k: v[rows] for k, v in features.items()})
      assert np.max(np.abs(got.numpy() - want[rows])) <= 1e-4
    model.set_active_adapters(None)
    base, _ = model.encode(features)
    assert np.max(np.abs(base.numpy() - want)) > 1e-3
  finally:
    for name in ("t0", "t1"):
      model.delete_adapter(name)
      model.delete_head(name)


@needs_adapterhub
def test_adapterhub_loads_an_mtl_lora_written_here(tmp_path):
  assert adapterhub_reads_ours(CASES["linear_three_up_everywhere_leave_out"]
                               .replace(task_specific_matrix_type=
                                        "singular_values"),
                               tmp_path) <= 1e-4


@needs_adapterhub_and_minilm
def test_adapterhubs_mtl_lora_on_the_minilm_reproduces_its_logits(tmp_path):
  diffs = ours_read_adapterhubs_on_the_minilm(
      "mtl_lora[alpha=16,r=4,n_up_projection=2,intermediate_lora=True]",
      tmp_path)
  assert max(diffs.values()) <= 1e-4, diffs


def test_bert_base_count_equals_adapterhubs():
  # AdapterHub 1.3.0, BERT-base config, train_adapter with config
  # "mtl_lora": 295,128 parameters require grad outside the head
  # (12 x 2 x (768 x 8 + 8 x 768 + 8 + 1)).
  assert bert_base_counts("mtl_lora")["trained"] == 295_128


def test_configs_as_adapterhub_writes_them():
  hub = dict(adapters.MTLLoRAConfig().to_dict(), architecture="mtl_lora")
  del hub["kind"]
  assert registry.kind_of_dict(hub) == "mtl_lora"
  assert adapters.config_from_dict(hub) == adapters.get_preset("mtl_lora")
  assert adapters.config_from_dict(hub) != adapters.get_preset("lora")
  for fields, message in (
      (dict(task_specific_matrix_type="full"),
       "task_specific_matrix_type='full' is not one of"),
      (dict(n_up_projection=0), "n_up_projection=0 must be >= 1"),
      (dict(weights_sharpness=0.0), "weights_sharpness"),
      (dict(use_dora=True), "use_dora=True is not supported"),
      (dict(composition_mode="scale"), "composition_mode='scale'")):
    with pytest.raises(UserError, match=message):
      adapters.MTLLoRAConfig(**fields)
