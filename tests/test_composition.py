"""Composition blocks, AdapterDrop and averaged adapters, against the same
arithmetic done by hand: Average against the NumPy BERT of test_methods
with each hook point's outputs averaged, BatchSplit and MultiTask against
their slices run alone, skipped layers against a model whose adapters there
are made the identity, average_adapter against the averaged weights."""

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert import adapters
from adapter_bert.adapters.composition import Average, BatchSplit, Fuse, MultiTask
from adapter_bert.adapters.composition import Parallel
from adapter_bert.adapters.composition import Stack
from adapter_bert.model import modeling
from adapter_bert.storage import checkpoint_io
from adapter_bert.errors import UserError
from test_methods import batch, np_bert, np_bn, np_projection
from test_modeling import features as as_features
from test_modeling import tiny_config
from test_modeling import weights_by_name as weights


def model_of(configs, heads=None, seed=0):
  """A tiny model with adapters {name: config}, random weights all over,
  and a head per adapter (3 labels for the first, 2 for the others)."""
  model = modeling.BertAdapterModel(tiny_config())
  for i, (name, config) in enumerate(configs.items()):
    model.add_adapter(name, config)
    if heads is None or name in heads:
      model.add_classification_head(name, num_labels=3 if i == 0 else 2)
  rng = np.random.default_rng(seed)
  for name in configs:
    model.set_active_adapters(name)
    for key, v in checkpoint_io.checkpoint_name_map(model).items():
      value = rng.normal(0.0, 0.3, size=v.shape)
      if key.endswith("gamma") or key.endswith("scaling"):
        value += 1.0
      v.assign(value.astype(np.float32))
  return model


def weights_of(model, name):
  model.set_active_adapters(name)
  return weights(model)


@pytest.mark.parametrize("case", ["bottleneck", "lora"])
def test_average_is_the_weighted_sum_at_every_hook_point(case):
  if case == "bottleneck":  # Pfeiffer + Houlsby places, weights as given.
    model = model_of({"a": "houlsby", "b": "pfeiffer"}, heads=())
    block = Average("a", "b", weights=[2.0, -0.5], normalize_weights=False)
  else:  # LoRA on q, v and the intermediate; weights normalised.
    lora = adapters.LoRAConfig(r=2, alpha=4, intermediate_lora=True)
    model = model_of({"a": lora, "b": lora}, heads=())
    block = Average("a", "b", weights=[1.0, 3.0])
  cfg = model.config
  ids, mask, segs = batch(cfg)
  wa, wb = weights_of(model, "a"), weights_of(model, "b")
  ca, cb = model.adapters["a"], model.adapters["b"]
  model.set_active_adapters(block)
  got, _ = model.encode(as_features(ids, mask, segs))
  u, v = model.active_adapters.weights
  assert (u, v) == ((2.0, -0.5) if case == "bottleneck" else (0.25, 0.75))

  def bn_fn(c, prefix, h, r, ln, m):
    # Each adapter's output from the same input, where it has one there.
    return (u * np_bn(ca, wa, prefix, h, r, ln, m)
            + v * np_bn(cb, wb, prefix, h, r, ln, m))

  def projection_fn(c, scope, x, point, m):
    return (u * np_projection(ca, wa, scope, x, point, m)
            + v * np_projection(cb, wb, scope, x, point, m))

  # The base's weights (and LayerNorms) are the same in both views.
  if case == "bottleneck":
    want = np_bert(wa, cfg, ids, mask, segs, ca, bn_fn=bn_fn)
  else:
    want = np_bert(wa, cfg, ids, mask, segs, ca, projection_fn=projection_fn)
  assert np.max(np.abs(got.numpy() - want)) <= 1e-5
  # A Stack of an adapter and an Average: the adapter at each hook point,
  # then the average (a and b both at ffn_output: houlsby's second place).
  if case == "bottleneck":
    model.add_adapter("c", "pfeiffer")
    model.set_active_adapters(Stack("c", Average("a", "b")))
    setup = model.active_setup()
    assert setup.branches[0].adapters == ("c", "a", "b")


def test_stack_is_sequential_application():
  # Stack(a, b): at every hook point b's adapter on a's output (each with
  # the block's residual and LayerNorm, as AdapterHub's compose_stack).
  model = model_of({"a": "houlsby", "b": "pfeiffer"}, heads=())
  cfg = model.config
  ids, mask, segs = batch(cfg)
  wa, wb = weights_of(model, "a"), weights_of(model, "b")
  ca, cb = model.adapters["a"], model.adapters["b"]
  model.set_active_adapters(Stack("a", "b"))
  got, _ = model.encode(as_features(ids, mask, segs))

  def bn_fn(c, prefix, h, r, ln, m):
    return np_bn(cb, wb, prefix, np_bn(ca, wa, prefix, h, r, ln, m), r, ln,
                 m)

  want = np_bert(wa, cfg, ids, mask, segs, ca, bn_fn=bn_fn)
  assert np.max(np.abs(got.numpy() - want)) <= 1e-5


def test_batch_split_and_multitask_run_each_slice_alone():
  model = model_of({"a": "pfeiffer", "b": adapters.LoRAConfig(r=2)})
  cfg = model.config
  ids, mask, segs = batch(cfg, lengths=(9, 4, 1, 7, 3), seq=9)
  feats = as_features(ids, mask, segs)
  alone = {}
  for name in ("a", "b"):
    model.set_active_adapters(name)
    alone[name] = model(feats).numpy()  # Rows are independent.

  model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[2, 3]))
  out = model(feats)
  assert sorted(out) == ["a", "b"] and out["a"].shape == (5, 3)
  np.testing.assert_allclose(out["a"][:2], alone["a"][:2], atol=1e-5)
  np.testing.assert_allclose(out["b"][2:], alone["b"][2:], atol=1e-5)
  assert np.isnan(out["a"][2:]).all() and np.isnan(out["b"][:2]).all()

  model.set_active_adapters(MultiTask("a", "b"))
  task_ids = np.array([1, 0, 1, 1, 0], np.int32)
  routed = dict(feats, task_ids=tf.constant(task_ids))
  out = model.predict(routed, batch_size=5, verbose=0)
  for t, name in enumerate(("a", "b")):
    rows = task_ids == t
    np.testing.assert_allclose(out[name][rows], alone[name][rows], atol=1e-5)
    assert np.isnan(out[name][~rows]).all()

  # The loss: each head's mean over its own examples, summed.
  labels = tf.constant([1, 2, 0, 1, 0])
  loss = float(model._loss(model(routed), labels))  # pylint: disable=protected-access
  want = 0.0
  for t, name in enumerate(("a", "b")):
    rows = task_ids == t
    logits = alone[name][rows].astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want += -np.mean(log_probs[np.arange(rows.sum()),
                               labels.numpy()[rows]])
  assert abs(loss - want) <= 1e-5

  with pytest.raises(UserError, match="'task_ids' feature"):
    model(feats)
  # train_adapter of the block: both adapters and both heads, nothing else.
  trained = model.train_adapter(MultiTask("a", "b"))
  ids = {id(v) for _, v in trained}
  assert ids == {id(v) for v in model.trainable_variables}
  want = set()
  for name in ("a", "b"):
    want |= {id(v) for k, (v, tag) in model.adapter_view(
        name).checkpoint_variables().items()
             if tag.kind == "head" or (tag.kind != "base"
                                       and tag.owner == name)}
  assert ids == want
  model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[2, 2]))
  # The toolkit's error, eagerly and from inside predict's graph (where the
  # batch size is known only when it runs).
  with pytest.raises(UserError, match=r"needs batches of 4 examples"):
    model(feats)
  with pytest.raises(UserError, match=r"needs batches of 4 examples"):
    model.predict({k: v.numpy() for k, v in feats.items()}, batch_size=5,
                  verbose=0)


def identity_at_layer_0(model, name):
  """Model `name`'s adapter-bert parts at the embeddings and layer 0 made
  the base's: up-projections zero (the adapter is then the identity) and
  LayerNorm copies equal to the base's."""
  model.set_active_adapters(None)
  base = weights(model)
  model.set_active_adapters(name)
  for key, v in checkpoint_io.checkpoint_name_map(model).items():
    if not key.startswith(("bert/embeddings/", "bert/encoder/layer_0/")):
      continue
    if "/adapters/weights2" in key or "/adapters/biases2" in key:
      v.assign(np.zeros(v.shape, np.float32))
    elif "LayerNorm" in key:
      v.assign(base[key].astype(np.float32))


def test_skipped_layers_run_as_the_base():
  model = model_of({"a": None, "b": "pfeiffer"})
  feats = as_features(*batch(model.config))
  skipped = {}
  for name in ("a", "b"):
    model.set_active_adapters(name, skip_layers=[0])
    assert model.skip_layers == [0]
    skipped[name] = model(feats).numpy()
  # Parallel with layer 0 skipped: that layer once for both, then each
  # branch; the same as each alone.
  model.set_active_adapters(Parallel("a", "b"), skip_layers=[0])
  both = model(feats)
  for name in ("a", "b"):
    np.testing.assert_allclose(both[name].numpy(), skipped[name], atol=1e-5)
  # Every layer skipped: the base's encoder under each head.
  model.set_active_adapters(Parallel("a", "b"), skip_layers=[0, 1])
  every = model(feats)
  model.set_active_adapters(None)
  model.active_head = "a"
  np.testing.assert_allclose(every["a"].numpy(), model(feats).numpy(),
                             atol=1e-5)
  model.active_head = None
  # By hand: adapter a made the identity where it was skipped.
  identity_at_layer_0(model, "a")
  model.set_active_adapters("a")
  np.testing.assert_allclose(model(feats).numpy(), skipped["a"], atol=1e-5)
  with pytest.raises(UserError, match=r"layer 2 is not one of 0\.\.1"):
    model.set_active_adapters("a", skip_layers=[2])
  assert model.skip_layers == [] and model.active_adapters == Stack("a")


def test_average_adapter_averages_every_weight():
  model = model_of({"a": None, "b": None, "l1": adapters.LoRAConfig(r=2),
                    "l2": adapters.LoRAConfig(r=2)}, heads=())
  wa, wb = weights_of(model, "a"), weights_of(model, "b")
  model.average_adapter("avg", ["a", "b"], weights=[1.0, 3.0])
  got = weights_of(model, "avg")
  for key in got:  # Adapters, their LayerNorm copies and the base.
    np.testing.assert_allclose(got[key], 0.25 * wa[key] + 0.75 * wb[key],
                               atol=1e-6, err_msg=key)
  # LoRA by the products: r 2 + 2 -> rank 4 holds the average exactly.
  w1, w2 = weights_of(model, "l1"), weights_of(model, "l2")
  model.average_adapter("lavg", {"l1": 0.4, "l2": 0.6},
                        combine_strategy="lora_delta_w_svd", svd_rank=4)
  assert model.adapters["lavg"].r == 4
  got = weights_of(model, "lavg")
  old, new = 8 / 2, 8 / 4  # alpha / r before and after.
  for key in got:
    if key.endswith("/lora_A"):
      scope = key[:-len("/lora_A")]

      def delta(w):
        return w[scope + "/lora_A"] @ w[scope + "/lora_B"]

      np.testing.assert_allclose(
          new * delta(got), old * (0.4 * delta(w1) + 0.6 * delta(w2)),
          atol=1e-5, err_msg=scope)
  with pytest.raises(UserError, match="different configs"):
    model.average_adapter("bad", ["a", "l1"])
  with pytest.raises(UserError, match="is for lora adapters"):
    model.average_adapter("bad", ["a", "b"], combine_strategy="lora_delta_w_svd")
  with pytest.raises(UserError, match="exists already"):
    model.average_adapter("avg", ["a", "b"])
  assert "bad" not in model.adapters


def test_composition_errors_name_the_culprit():
  model = model_of({"a": None, "b": "pfeiffer", "c": "pfeiffer"})
  with pytest.raises(UserError, match=r"a trains their own|a train"):
    model.set_active_adapters(Average("a", "b"))
  with pytest.raises(UserError, match="Parallel cannot be nested in Average"):
    model.set_active_adapters(Average("b", Parallel("b", "c")))
  with pytest.raises(UserError, match="one Parallel, BatchSplit or MultiTask"):
    model.set_active_adapters(Stack(BatchSplit("b", "c", batch_sizes=1),
                                    MultiTask("b", "c")))
  with pytest.raises(UserError, match="got 1 weights"):
    Average("b", "c", weights=[1.0])
  with pytest.raises(UserError, match="batch_sizes must be counts"):
    BatchSplit("b", "c", batch_sizes=[1, -1])
  with pytest.raises(UserError, match="unknown adapter 'd'"):
    model.set_active_adapters(MultiTask("b", "d"))
  # A failed call leaves the active setup as it was.
  assert model.active_adapters == Stack("c")


# ------------------------------------------------------------ AdapterFusion


def np_fused(ca, wa, cb, wb, fw, fc, prefix, h, r, ln):
  """AdapterHub's fusion at one place (BertFusion after the last adapter's
  pre_forward), in NumPy: what goes into LN(. + r)."""
  if not any(k.startswith(prefix + "/adapters/") for k in wa):
    return h  # No adapter here: nothing to fuse.
  res = h if cb.residual_before_ln is True else None
  query, hh = h, h
  if cb.original_ln_before:
    hh = ln(h + r)
  if cb.residual_before_ln is False:
    res = hh
  if not fc.query_before_ln:
    query = hh

  def up(c, w):
    p = prefix + "/adapters/"
    from test_methods import ACTS  # pylint: disable=g-import-not-at-top
    down = ACTS[c.non_linearity](hh @ w[p + "weights1"] + w[p + "biases1"])
    return (down @ w[p + "weights2"] + w[p + "biases2"]) * c.scaling

  ups = np.stack([up(ca, wa), up(cb, wb)], axis=2)  # [b, s, 2, H]
  f = prefix + "/adapter_fusion/"
  values = ups + res[:, :, None, :] if fc.residual_before else ups
  q = query @ fw[f + "query/kernel"] + fw[f + "query/bias"]
  k = ups @ fw[f + "key/kernel"] + fw[f + "key/bias"]
  if fc.value:
    values = values @ fw[f + "value/kernel"]
  scores = np.einsum("bsh,bsnh->bsn", q, k)
  p = np.exp(scores - scores.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  out = np.einsum("bsn,bsnh->bsh", p, values)
  return out if fc.residual_before else out + res


@pytest.mark.parametrize("preset,fusion", [
    ("houlsby", "dynamic"),
    ("pfeiffer", {"value": False, "regularization": False,
                  "query_before_ln": True, "residual_before": True}),
])
def test_fuse_matches_numpy(preset, fusion):
  model = model_of({"a": preset, "b": preset}, heads=())
  model.add_adapter_fusion(["a", "b"], config=fusion, set_active=True)
  rng = np.random.default_rng(3)
  fw = {}
  for key, v in model.fusion_variables("a,b").items():
    v.assign(rng.normal(0.0, 0.3, v.shape).astype(np.float32))
    fw[key] = v.numpy().astype(np.float64)
  assert fw, "the fusion has variables"
  cfg = model.config
  ids, mask, segs = batch(cfg)
  got, _ = model.encode(as_features(ids, mask, segs))
  wa, wb = weights_of(model, "a"), weights_of(model, "b")
  ca, cb = model.adapters["a"], model.adapters["b"]
  fc = model.fusions["a,b"][1]

  def bn_fn(c, prefix, h, r, ln, m):
    place = prefix[:-len("/adapters")]
    return np_fused(ca, wa, cb, wb, fw, fc, place, h, r, ln)

  want = np_bert(wa, cfg, ids, mask, segs, ca, bn_fn=bn_fn)
  assert np.max(np.abs(got.numpy() - want)) <= 1e-5


def test_train_save_and_load_a_fusion(tmp_path):
  model = model_of({"a": "pfeiffer", "b": "pfeiffer", "ref": None},
                   heads=("a",))
  model.add_classification_head("rte_fused", 2)
  model.add_adapter_fusion("a,b")
  model.active_head = "rte_fused"
  trained = model.train_adapter_fusion(["a", "b"])
  assert model.active_adapters == Fuse("a", "b")
  ids = {id(v) for v in model.trainable_variables}
  assert ids == {id(v) for v in trained}
  assert len(trained) == 2 * 5 + 2  # 2 layers x (q, k: kernel, bias; v), head.
  # The regularisation, by hand.
  want = sum(0.01 * np.sum((np.eye(16) - v.numpy()) ** 2)
             for k, v in model.fusion_variables("a,b").items()
             if k.endswith("value/kernel"))
  assert abs(float(model.fusion_regularization_loss()) - want) <= 1e-5
  before = {id(v): v.numpy() for v in model.weights}
  feats = as_features(*batch(model.config))
  labels = tf.constant([0, 1, 1, 0])
  model.compile(optimizer=tf.keras.optimizers.SGD(0.1))
  model.fit(tf.data.Dataset.from_tensors((feats, labels)), verbose=0)
  for v in model.weights:
    moved = np.max(np.abs(v.numpy() - before[id(v)])) > 0
    assert moved == (id(v) in ids), v.path
  logits = model(feats).numpy()
  model.save_adapter_fusion(str(tmp_path / "fusion"), "a,b",
                            with_adapters=True, with_head="rte_fused")
  model.set_active_adapters(None)
  base = {k: v.astype(np.float32) for k, v in weights(model).items()}

  def fresh_model():
    fresh = modeling.BertAdapterModel(model.config)
    for key, v in checkpoint_io.checkpoint_name_map(fresh).items():
      v.assign(base[key])  # The same base.
    return fresh

  fresh = fresh_model()
  name = fresh.load_adapter_fusion(str(tmp_path / "fusion"), set_active=True)
  assert name == "a,b" and sorted(fresh.adapters) == ["a", "b"]
  assert fresh.active_head == "rte_fused"  # The head came with the fusion.
  np.testing.assert_allclose(fresh(feats).numpy(), logits, atol=1e-5)
  bare = fresh_model()
  bare.load_adapter_fusion(str(tmp_path / "fusion"), with_head=False)
  assert "rte_fused" not in bare.heads and "a,b" in bare.fusions
  with pytest.raises(UserError, match="head 'rte_fused' exists in the model"):
    fresh.load_adapter_fusion(str(tmp_path / "fusion"), load_as="again")
  assert "again" not in fresh.fusions
  with pytest.raises(UserError, match="no head named 'nope'"):
    model.save_adapter_fusion(str(tmp_path / "f2"), "a,b", with_head="nope")
  # Errors.
  with pytest.raises(UserError, match="'ref' .* cannot be fused"):
    model.add_adapter_fusion(["a", "ref"])
  model.add_adapter("h", "houlsby")
  with pytest.raises(UserError, match="at attention_output of layer 0 only "
                     "h has a bottleneck"):
    model.add_adapter_fusion(["a", "h"])
  with pytest.raises(UserError, match="no fusion 'b,a'"):
    model.set_active_adapters(Fuse("b", "a"))
  other = modeling.BertAdapterModel(tiny_config(hidden_size=8))
  with pytest.raises(UserError, match="another base"):
    other.load_adapter_fusion(str(tmp_path / "fusion"))


def test_fusion_script_trains_the_fusion_and_saves_what_reloads(tmp_path):
  """scripts/adapter_fusion_glue.py (adapter_bert.cli.fusion_glue): two
  adapters saved on a tiny base are
  fused for MRPC; only the fusion and the head move, the results file is
  written, and the saved fusion (with its head) predicts what was trained."""
  import tiny_fixtures as fx  # pylint: disable=g-import-not-at-top
  from adapter_bert.cli import fusion_glue  # pylint: disable=g-import-not-at-top
  try:
    _run_fusion_script(fusion_glue, fx, tmp_path)
  finally:
    fx.forget_flags_of("adapter_bert.cli.fusion_glue")


def _run_fusion_script(adapter_fusion_glue, fx, tmp_path):
  import os  # pylint: disable=g-import-not-at-top
  flags = fx.make_job(tmp_path)
  bert_dir = os.path.dirname(flags["bert_config_file"])
  dirs = []
  for i, name in enumerate(("one", "two")):
    model = modeling.BertAdapterModel.from_pretrained(bert_dir)
    model.add_adapter(name, "pfeiffer")
    rng = np.random.default_rng(i)
    for key, v in model.adapter_view(name).checkpoint_name_map().items():
      if "adapters" in key:
        v.assign(rng.normal(0.0, 0.3, size=v.shape).astype(np.float32))
    dirs.append(str(tmp_path / name))
    model.save_adapter(dirs[-1], name, with_head=False)
  out = str(tmp_path / "fused")
  results = adapter_fusion_glue.run(
      "MRPC", flags["data_dir"], bert_dir, dirs, out, num_train_epochs=1,
      train_batch_size=8, eval_batch_size=8, max_seq_length=24,
      learning_rate=1e-2, optimizer="adamw")  # AdapterHub's update in fit
  assert 0.0 <= results["eval_accuracy"] <= 1.0
  assert results["global_step"] == 64 // 8
  written = fx.read_eval_results(out)
  assert written["eval_accuracy"] == results["eval_accuracy"]
  fresh = modeling.BertAdapterModel.from_pretrained(bert_dir)
  name = fresh.load_adapter_fusion(os.path.join(out, "fusion"),
                                   set_active=True)
  assert name == "one,two" and fresh.active_head == "mrpc_fusion"
  from adapter_bert.data import glue_processors  # pylint: disable=g-import-not-at-top
  from adapter_bert.data import input_pipeline  # pylint: disable=g-import-not-at-top
  dev = input_pipeline.GlueData(
      glue_processors.get_processor("MRPC"), flags["data_dir"],
      vocab_file=flags["vocab_file"], do_lower_case=True, max_seq_length=24,
      cache_dir=str(tmp_path / "f")).eval_dataset("dev", batch_size=8)
  labels = np.concatenate([f["label_ids"].numpy() for f in dev])
  real = np.concatenate([f["is_real_example"].numpy() for f in dev]) > 0
  predicted = np.argmax(fresh.predict(dev, verbose=0), -1)
  assert np.mean(predicted[real] == labels[real]) == results["eval_accuracy"]
  # The fused adapters are unchanged (only the fusion and head trained).
  for i, n in enumerate(("one", "two")):
    again = modeling.BertAdapterModel.from_pretrained(bert_dir)
    again.load_adapter(dirs[i])
    for key, v in again.adapter_view(n).checkpoint_name_map().items():
      np.testing.assert_array_equal(
          v.numpy(), fresh.adapter_view(n).checkpoint_name_map()[key].numpy())
  with pytest.raises(UserError, match="exists already"):
    adapter_fusion_glue.run("MRPC", flags["data_dir"], bert_dir, dirs, out)
  with pytest.raises(UserError, match="two or more"):
    adapter_fusion_glue.run("MRPC", flags["data_dir"], bert_dir, dirs[:1],
                            str(tmp_path / "other"))
