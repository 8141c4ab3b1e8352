"""Adapter methods by name: each against an independent NumPy forward pass.

The NumPy BERT below is written from the papers and AdapterHub's
semantics (its `Adapter.pre_forward/forward/post_forward`, `ParallelAdapter`,
`LoRA`, `IA3`), in float64, and compared with the Keras model on a tiny
config whose every variable (adapters' included) is random.
"""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert import adapters
from adapter_bert.adapters import bottleneck
from adapter_bert.storage import checkpoint_io
from adapter_bert.model import modeling
from adapter_bert.errors import UserError
# The tiny config, batch and weight helpers of the model core's tests (the
# NumPy reference of each method is below, on its own).
from test_modeling import features as as_features
from test_modeling import mixed_batch
from test_modeling import tiny_config
from test_modeling import weights_by_name as weights


def model_with(config, cfg=None, seed=0):
  cfg = cfg or tiny_config()
  model = modeling.BertAdapterModel(cfg)
  model.add_adapter("a", config, set_active=True)
  model.add_classification_head("a", num_labels=3)
  rng = np.random.default_rng(seed)
  for name, v in checkpoint_io.checkpoint_name_map(model).items():
    value = rng.normal(0.0, 0.3, size=v.shape)
    if name.endswith("gamma") or name.endswith("scaling"):
      value += 1.0
    if name.endswith("lora_B") and len(v.shape) == 1:
      value += 1.0  # (IA)^3 scales near one.
    v.assign(value.astype(np.float32))
  return model


def batch(cfg, lengths=(9, 4, 1, 7), seq=9, seed=1):
  return mixed_batch(cfg, list(lengths), seq, seed)


# --------------------------------------------------------------- NumPy side

ACTS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "swish": lambda x: x / (1.0 + np.exp(-x)),
    "gelu_new": lambda x: 0.5 * x * (1.0 + np.tanh(
        math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    "gelu": lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(
        x / math.sqrt(2.0))),
    "tanh": np.tanh,
}


def np_ln(x, gamma, beta, eps=1e-12):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * gamma + beta


def np_kron(a, b):
  """The Kronecker product of two matrices, entry by entry."""
  out = np.zeros((a.shape[0] * b.shape[0], a.shape[1] * b.shape[1]))
  for i in range(a.shape[0]):
    for j in range(a.shape[1]):
      out[i * b.shape[0]:(i + 1) * b.shape[0],
          j * b.shape[1]:(j + 1) * b.shape[1]] = a[i, j] * b
  return out


def np_phm(c, w, scope, x):
  """Compacter's PHM layer: x·sum_i kron(rule_i, W_i) + b (AdapterHub's
  PHMLayer), the rule the adapter's shared one or the layer's own."""
  if scope + "/W" in w:
    ws = w[scope + "/W"]
  else:
    ws = w[scope + "/W_left"] @ w[scope + "/W_right"]
  owner = "bert/adapters/" if c.shared_phm_rule else scope + "/"
  if owner + "phm_rule" in w:
    rule = w[owner + "phm_rule"]
  else:
    rule = w[owner + "phm_rule_left"] @ w[owner + "phm_rule_right"]
  h = sum(np_kron(rule[i], ws[i]) for i in range(c.phm_dim))
  y = x @ h
  return y + w[scope + "/b"] if c.phm_bias else y


def np_gate(w, scope, x, mask):
  """A UniPELT gate: per example, the mean over its real tokens of
  sigmoid(x·W + b). x [b, s, in], mask [b, s] -> [b, heads]."""
  scores = 1.0 / (1.0 + np.exp(-(x @ w[scope + "/kernel"]
                                 + w[scope + "/bias"])))  # [b, s, heads]
  m = mask.astype(np.float64)[:, :, None]
  return (scores * m).sum(1) / m.sum(1)


def np_bn(c, w, prefix, h, r, ln, mask):
  """AdapterHub's bottleneck at one place: what goes into LN(. + r)."""
  if not any(k.startswith(prefix + "/") for k in w):
    return h

  def up_of(x):
    gate_input = x
    up = up_without_gate(x)
    if c.use_gating:
      up = up * np_gate(w, prefix + "/gate", gate_input, mask)[:, None, :]
    return up

  def up_without_gate(x):
    if c.ln_before:
      x = np_ln(x, w[prefix + "/ln_before/gamma"], w[prefix + "/ln_before/beta"],
                1e-5)
    if c.phm_layer:
      down = ACTS[c.non_linearity](np_phm(c, w, prefix + "/down", x))
      up = np_phm(c, w, prefix + "/up", down)
    else:
      down = ACTS[c.non_linearity](x @ w[prefix + "/weights1"]
                                   + w[prefix + "/biases1"])
      up = down @ w[prefix + "/weights2"] + w[prefix + "/biases2"]
    if isinstance(c.scaling, str):
      return up * w[prefix + "/scaling"]
    return up * c.scaling

  def ln_after(x):
    return np_ln(x, w[prefix + "/ln_after/gamma"], w[prefix + "/ln_after/beta"],
                 1e-5) if c.ln_after else x

  if c.is_parallel:
    # ParallelAdapter: the adapter reads the sub-layer's input; its output
    # joins the sub-layer's output before the usual residual LayerNorm.
    return h + ln_after(up_of(r))
  residual = h if c.residual_before_ln is True else None
  if c.original_ln_before:
    if c.residual_before_ln == "post_add":
      residual = h + r
    h = ln(h + r)
  if c.residual_before_ln is False:
    residual = h
  up = up_of(h)
  if c.adapter_residual_before_ln:
    return ln_after(up + residual)
  return ln_after(up) + residual


def np_projection(c, w, scope, x, point, mask=None):
  """x·W + b with LoRA or (IA)^3 on it where the config puts them."""
  y = x @ w[scope + "/kernel"] + w[scope + "/bias"]
  if c is None or c.kind not in ("lora", "ia3"):
    return y
  if scope + "/lora_B" not in w:
    return y
  if c.kind == "ia3":
    return y * w[scope + "/lora_B"] * c.alpha
  delta = x @ w[scope + "/lora_A"] @ w[scope + "/lora_B"]
  if c.use_gating:  # The gate takes the place of alpha / r.
    return y + delta * np_gate(w, scope + "/lora_gate", x, mask)[:, None, :]
  return y + delta * (c.alpha / c.r)


def np_prefixes(c, w, cfg, layer):
  """Prefix tuning's (keys, values) [prefix, H] of one block: the flat
  variables, or AdapterHub's PrefixTuning MLP, whose output [prefix,
  n_layers * 2 * H] is viewed as [prefix, n_layers * 2, H]: the block's
  keys at 2i, values at 2i + 1 (i counting blocks with prefixes)."""
  flat = "bert/encoder/layer_%d/attention/self/prefix_tuning/" % layer
  if flat + "keys" in w:
    return w[flat + "keys"], w[flat + "values"]
  pool = "bert/prefix_tuning/"
  if pool + "wte" not in w:
    return None  # Taken out (the checks that the prefixes count).
  hidden = ACTS[c.non_linearity](
      w[pool + "wte"] @ w[pool + "control_trans/dense_0/kernel"]
      + w[pool + "control_trans/dense_0/bias"])
  out = (hidden @ w[pool + "control_trans/dense_1/kernel"]
         + w[pool + "control_trans/dense_1/bias"])
  kept = [i for i in range(cfg.num_hidden_layers) if i not in c.leave_out]
  out = out.reshape(c.prefix_length, 2 * len(kept), cfg.hidden_size)
  i = kept.index(layer)
  return out[:, 2 * i], out[:, 2 * i + 1]


def np_bert(w, cfg, ids, mask, segs, config, bn_fn=None, projection_fn=None,
            block_output_fn=None):
  """The NumPy BERT with `config`'s adapter; `bn_fn(c, prefix, h, r, ln,
  mask)` and `projection_fn(c, scope, x, point, mask)`, where given, stand
  for np_bn and np_projection (the composition tests' averages);
  `block_output_fn(layer, x, mask)` edits each block's output."""
  bn_fn = bn_fn or (lambda c, *args: np_bn(c, w, *args))
  projection_fn = projection_fn or (lambda c, *args: np_projection(
      c, w, *args))
  # A union's parts: the bottleneck at each place, the LoRA/(IA)^3 one.
  parts = list(config.configs) if config.kind == "union" else [config]
  bns = [x for x in parts if x.kind == "bn"]
  bn_attention = next((x for x in bns if x.mh_adapter), None)
  bn_ffn = next((x for x in bns if x.output_adapter), None)
  c = next((x for x in parts if x.kind in ("lora", "ia3")), parts[0])
  inv = next((x for x in bns if x.inv_adapter), None)
  prefix = next((x for x in parts if x.kind == "prefix_tuning"), None)
  b, s = ids.shape
  h, n = cfg.hidden_size, cfg.num_attention_heads
  d = h // n
  x = (w["bert/embeddings/word_embeddings"][ids]
       + w["bert/embeddings/token_type_embeddings"][segs]
       + w["bert/embeddings/position_embeddings"][:s][None])
  x = np_ln(x, w["bert/embeddings/LayerNorm/gamma"],
            w["bert/embeddings/LayerNorm/beta"])
  if inv is not None:
    # MAD-X's invertible adapter (NICE coupling) on the embedding output.
    pre = "bert/embeddings/invertible_adapter/"

    def subnet(net, t):
      hidden = ACTS[inv.non_linearity](t @ w[pre + net + "/weights1"]
                                     + w[pre + net + "/biases1"])
      return hidden @ w[pre + net + "/weights2"] + w[pre + net + "/biases2"]

    x1, x2 = x[..., :h // 2], x[..., h // 2:]
    y1 = x1 + subnet("F", x2)
    x = np.concatenate([y1, x2 + subnet("G", y1)], axis=-1)
  prompt = next((x for x in parts if x.kind == "prompt_tuning"), None)
  name = "bert/embeddings/prompt_tuning/prompt_embedding"
  if prompt is not None and name in w:
    # Prompt tuning: soft tokens join the embedding output, attended.
    soft = np.broadcast_to(w[name][None], (b,) + w[name].shape)
    ones = np.ones((b, w[name].shape[0]), mask.dtype)
    if prompt.combine == "prefix":
      x = np.concatenate([soft, x], axis=1)
      mask = np.concatenate([ones, mask], axis=1)
    else:
      x = np.concatenate([x[:, :1], soft, x[:, 1:]], axis=1)
      mask = np.concatenate([mask[:, :1], ones, mask[:, 1:]], axis=1)
    s = x.shape[1]
  adder = (1.0 - mask[:, None, None, :].astype(np.float64)) * -10000.0
  states = [x]
  for layer in range(cfg.num_hidden_layers):
    p = "bert/encoder/layer_%d/" % layer

    def heads(t):
      return t.reshape(b, s, n, d).transpose(0, 2, 1, 3)

    q = heads(projection_fn(c, p + "attention/self/query", x, "query", mask))
    k = heads(projection_fn(c, p + "attention/self/key", x, "key", mask))
    v = heads(projection_fn(c, p + "attention/self/value", x, "value", mask))
    layer_adder = adder
    prefixes = (np_prefixes(prefix, w, cfg, layer) if prefix is not None
                and layer not in prefix.leave_out else None)
    if prefixes is not None:
      # Prefix tuning: P keys and values in front, attended by every
      # position (mask 0 there).
      pk, pv = prefixes
      length = pk.shape[0]

      def prefix_heads(t):
        t = t.reshape(length, n, d).transpose(1, 0, 2)
        return np.broadcast_to(t[None], (b, n, length, d))

      pk, pv = prefix_heads(pk), prefix_heads(pv)  # [b, heads, P, d]
      if prefix.use_gating:  # Per example, from the attention input.
        g = np_gate(w, p + "attention/self/prefix_tuning/gate", x, mask)
        pk = pk * g[:, 0][:, None, None, None]
        pv = pv * g[:, -1][:, None, None, None]
      k = np.concatenate([pk, k], axis=2)
      v = np.concatenate([pv, v], axis=2)
      layer_adder = np.concatenate([np.zeros((b, 1, 1, length)), adder], -1)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + layer_adder
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, h)
    a = ctx @ w[p + "attention/output/dense/kernel"] + w[
        p + "attention/output/dense/bias"]

    def ln_att(t, p=p):
      return np_ln(t, w[p + "attention/output/LayerNorm/gamma"],
                   w[p + "attention/output/LayerNorm/beta"])

    def ln_out(t, p=p):
      return np_ln(t, w[p + "output/LayerNorm/gamma"],
                   w[p + "output/LayerNorm/beta"])

    def closes(bn, prefix):
      # original_ln_after=False: the adapter's output is the block's.
      return (bn is not None and not bn.original_ln_after
              and any(k.startswith(prefix + "/") for k in w))

    if bn_attention is not None:
      a = bn_fn(bn_attention, p + "attention/output/adapters", a, x, ln_att,
                mask)
    if not closes(bn_attention, p + "attention/output/adapters"):
      a = ln_att(a + x)
    inter = ACTS["gelu_new"](projection_fn(c, p + "intermediate/dense", a,
                                           "intermediate_projection", mask))
    o = projection_fn(c, p + "output/dense", inter, "output_projection",
                      mask)
    if bn_ffn is not None:
      o = bn_fn(bn_ffn, p + "output/adapters", o, a, ln_out, mask)
    x = o if closes(bn_ffn, p + "output/adapters") else ln_out(o + a)
    if block_output_fn is not None:
      x = block_output_fn(layer, x, mask)
    states.append(x)
  if config.kind == "layer_attention":
    return np_layer_attention(config, w, states, mask)
  return x


def np_head_averaged(q, k, heads, key_adder=None):
  """torch MultiheadAttention's weights: the heads' softmax(q_i·k_iᵀ /
  sqrt(d)), averaged over heads. q [b, n, h], k [b, m, h] -> [b, n, m]."""
  d = q.shape[-1] // heads
  out = 0.0
  for i in range(heads):
    scores = q[..., i * d:(i + 1) * d] @ np.swapaxes(
        k[..., i * d:(i + 1) * d], 1, 2) / math.sqrt(d)
    if key_adder is not None:
      scores = scores + key_adder
    e = np.exp(scores - scores.max(-1, keepdims=True))
    out = out + e / e.sum(-1, keepdims=True)
  return out / heads


def np_layer_attention(c, w, states, mask):
  """Basirat's adapter on the hidden states (embedding output first): the
  per-token attention over layers, then the tailor block."""
  pre = "bert/encoder/layer_attention/"

  def dense(name, x):
    return x @ w[pre + name + "/kernel"] + w[pre + name + "/bias"]

  layers = list(c.aggregation_layers) or list(range(len(states)))
  s = np.stack([states[i] for i in layers], axis=2)  # [b, seq, L', H]
  m = mask.astype(np.float64)[:, :, None]  # [b, seq, 1]
  q = dense("query_projector", s.mean(axis=2))
  token_mean = (s * m[..., None]).sum(1) / m.sum(1)[:, :, None]  # [b, L', H]
  k = dense("key_projector", token_mean)
  a = np_head_averaged(dense("layer_attention/query", q),
                       dense("layer_attention/key", k), c.num_heads)
  r = np.einsum("btlh,btl->bth", s, a) * m
  if not c.enable_tailor:
    return r
  normed = np_ln(r, w[pre + "tailor/LayerNorm/gamma"],
                 w[pre + "tailor/LayerNorm/beta"])
  x = r + np.maximum(dense("tailor/dense", normed), 0.0)
  if c.tailor_attention:
    p = dense("tailor/query_reducer", x)
    key_adder = (1.0 - mask.astype(np.float64))[:, None, :] * -1e9
    x = np_head_averaged(dense("tailor/attention/query", p),
                         dense("tailor/attention/key", p), c.num_heads,
                         key_adder) @ x
  return (r + x) * m


def check_against_numpy(config):
  """Builds the model with adapter `config`, checks its sequence output
  against np_bert (<= 1e-5); returns a function of a weight dict giving
  np_bert's output, the weights and that output."""
  model = model_with(config)
  c = model.adapters["a"]
  cfg = model.config
  ids, mask, segs = batch(cfg)
  got, _ = model.encode(as_features(ids, mask, segs))
  w = weights(model)

  def reference(values):
    return np_bert(values, cfg, ids, mask, segs, c)

  want = reference(w)
  assert np.max(np.abs(got.numpy() - want)) <= 1e-5
  return reference, w, want, c


BN_CASES = {
    "pfeiffer": "pfeiffer",
    "seq_bn": "seq_bn",
    "houlsby": "houlsby",
    "parallel": "parallel",
    "scaled_parallel": "scaled_parallel",
    "pfeiffer+inv": "pfeiffer+inv",
    "houlsby+inv": "double_seq_bn_inv",
    # The other switches of the general config, two ways.
    "ln_before_after_post_add_channel": adapters.BnConfig(
        mh_adapter=True, reduction_factor=4, non_linearity="gelu",
        ln_before=True, ln_after=True, residual_before_ln="post_add",
        adapter_residual_before_ln=True, scaling="channel"),
    "residual_after_ln_leave_out": adapters.BnConfig(
        reduction_factor={"0": 2, "default": 8}, non_linearity="tanh",
        residual_before_ln=False, ln_after=True, leave_out=[1],
        scaling=0.5),
    "parallel_ln_after": adapters.BnConfig(
        reduction_factor=4, original_ln_before=False, is_parallel=True,
        ln_after=True, scaling=2.0, non_linearity="gelu_new"),
    # Compacter: PHM projections with the adapter's shared rule.
    "compacter": adapters.get_preset("compacter").replace(reduction_factor=2),
    "compacter++": adapters.get_preset("compacter++").replace(
        reduction_factor=2),
    # The PHM switches the other way: full W, factorized per-layer rules,
    # no bias, rank 2.
    "phm_own_factorized_rules": adapters.BnConfig(
        reduction_factor=2, phm_layer=True, phm_dim=2,
        factorized_phm_W=False, shared_phm_rule=False,
        factorized_phm_rule=True, phm_bias=False),
    # The block's LayerNorm before the adapters only (Adapter+'s place),
    # and none at all around a parallel one.
    "ln_before_only_leave_out": adapters.BnConfig(
        mh_adapter=True, original_ln_after=False, residual_before_ln=False,
        reduction_factor=4, scaling="channel", leave_out=[0]),
    "parallel_no_block_ln": adapters.BnConfig(
        reduction_factor=4, original_ln_before=False, original_ln_after=False,
        is_parallel=True, scaling=2.0),
    "gated_parallel": adapters.BnConfig(
        reduction_factor=4, original_ln_before=False, is_parallel=True,
        use_gating=True, scaling=2.0),
    "gated_houlsby": bottleneck.DOUBLE_SEQ_BN.replace(reduction_factor=4,
                                                      use_gating=True),
    "phm_rank_2_shared_factorized": adapters.BnConfig(
        reduction_factor=2, phm_layer=True, phm_rank=2,
        factorized_phm_rule=True, phm_c_init="uniform"),
}


@pytest.mark.parametrize("case", sorted(BN_CASES))
def test_bottleneck_family_matches_numpy(case):
  reference, w, want, c = check_against_numpy(BN_CASES[case])
  # The adapters are really there: without them the output differs.
  plain = {k: v for k, v in w.items() if "adapters/" not in k}
  if c.inv_adapter:
    plain = dict(plain, **{k: np.zeros_like(v) for k, v in plain.items()
                           if "invertible_adapter" in k})
  assert np.max(np.abs(reference(plain) - want)) > 1e-3


def test_invertible_adapter_inverts():
  model = model_with("pfeiffer+inv")
  layer = model.bert.embeddings.embedding_output.layers_by_adapter["a"]
  x = tf.constant(np.random.default_rng(3).normal(size=(7, 16)), tf.float32)
  y = layer(x)
  assert np.max(np.abs(y.numpy() - x.numpy())) > 1e-2
  np.testing.assert_allclose(layer(y, reverse=True).numpy(), x.numpy(),
                             atol=1e-5)


UNION_CASES = {
    "lora_and_pfeiffer": adapters.ConfigUnion("lora", "pfeiffer"),
    "two_bottlenecks_at_two_places": adapters.ConfigUnion(
        adapters.BnConfig(mh_adapter=True, output_adapter=False,
                          reduction_factor=4, non_linearity="swish"),
        adapters.BnConfig(reduction_factor=8, original_ln_before=False,
                          is_parallel=True, scaling=2.0)),
    "ia3_and_houlsby_inv": {"architecture": "union", "configs": [
        adapters.IA3Config().to_dict(),
        adapters.get_preset("houlsby+inv").to_dict()]},
    "mam": "mam",
    # Prefix tuning, a bottleneck and LoRA, each gated (reduction 4 here:
    # 16 would leave the tiny hidden size a bottleneck of 1).
    "unipelt": adapters.ConfigUnion(*[
        c.replace(reduction_factor=4) if c.kind == "bn" else c
        for c in adapters.get_preset("unipelt").configs]),
}


def test_only_the_first_adapter_of_a_stack_acts_at_the_embeddings():
  # AdapterHub (MAD-X): in Stack(language, task) the invertible adapter and
  # the prompts are the first adapter's; the others' are not applied.
  from adapter_bert.adapters import composition  # pylint: disable=g-import-not-at-top
  model = model_with("pfeiffer+inv")
  model.add_adapter("b", "pfeiffer+inv")
  for name, v in model.adapter_view("b").checkpoint_name_map().items():
    if "invertible_adapter" in name:
      v.assign(np.full(v.shape, 0.3, np.float32))
  ids, _, segs = batch(model.config)

  def embedded(*names):
    return model.bert.embeddings(
        tf.constant(ids), tf.constant(segs),
        setup=model.resolve_setup(composition.Stack(*names))).numpy()

  np.testing.assert_array_equal(embedded("a", "b"), embedded("a"))
  np.testing.assert_array_equal(embedded("b", "a"), embedded("b"))
  assert np.max(np.abs(embedded("a") - embedded("b"))) > 1e-3


@pytest.mark.parametrize("case", sorted(UNION_CASES))
def test_config_unions_match_numpy(case):
  reference, w, want, c = check_against_numpy(UNION_CASES[case])
  assert c.kind == "union"
  # Each part is in the computation.
  for marker in ("/adapters/", "lora_", "prefix_tuning/"):
    if any(marker in k for k in w):
      without = {k: v for k, v in w.items() if marker not in k}
      assert np.max(np.abs(reference(without) - want)) > 1e-3, marker


def test_config_union_refusals_and_round_trip():
  with pytest.raises(UserError, match="two lora configs"):
    adapters.ConfigUnion("lora", adapters.LoRAConfig(r=4))
  with pytest.raises(UserError, match="two bn configs"):
    adapters.ConfigUnion("pfeiffer", "parallel")
  with pytest.raises(UserError, match="another ConfigUnion"):
    adapters.ConfigUnion(adapters.ConfigUnion("lora"))
  union = adapters.ConfigUnion("lora", "pfeiffer")
  assert adapters.config_from_dict(union.to_dict()) == union
  # AdapterHub's own form of a union, as its adapter_config.json holds it.
  theirs = {"architecture": "union", "configs": [
      dict({k: v for k, v in adapters.LoRAConfig().to_dict().items()
            if k != "kind"}, architecture="lora"),
      {k: v for k, v in adapters.get_preset("pfeiffer").to_dict().items()
       if k != "kind"}]}
  assert adapters.config_from_dict(theirs) == union


PREFIX_CASES = {
    "prefix_tuning": "prefix_tuning",
    "prefix_tuning_flat": "prefix_tuning_flat",
    "short_relu_leave_out": adapters.PrefixTuningConfig(
        prefix_length=3, bottleneck_size=5, non_linearity="relu",
        leave_out=[0]),
    "gated_keys_and_values_apart": adapters.PrefixTuningConfig(
        prefix_length=3, bottleneck_size=5, use_gating=True,
        shared_gating=False),
}


@pytest.mark.parametrize("case", sorted(PREFIX_CASES))
def test_prefix_tuning_matches_numpy(case):
  reference, w, want, _ = check_against_numpy(PREFIX_CASES[case])
  plain = {k: v for k, v in w.items() if "prefix_tuning" not in k}
  assert np.max(np.abs(reference(plain) - want)) > 1e-3


def test_prefix_tuning_saves_the_plain_prefixes(tmp_path):
  # What is saved is what the MLP computes per block (AdapterHub's eject),
  # with flat=True: another model predicts the same from it alone.
  model = model_with(adapters.PrefixTuningConfig(prefix_length=4,
                                                 leave_out=[1]))
  feats = as_features(*batch(model.config))
  want = model.predict(feats, verbose=0)
  path = model.save_adapter(str(tmp_path / "p"), "a")
  saved = dict(tf.train.list_variables(os.path.join(path, "adapter.ckpt")))
  assert sorted(n for n in saved if n not in ("output_weights",
                                              "output_bias")) == [
      "bert/encoder/layer_0/attention/self/prefix_tuning/keys",
      "bert/encoder/layer_0/attention/self/prefix_tuning/values"]
  assert saved["bert/encoder/layer_0/attention/self/prefix_tuning/keys"] == [
      4, model.config.hidden_size]
  other = modeling.BertAdapterModel(model.config)
  base = checkpoint_io.checkpoint_name_map(model)
  for n, v in checkpoint_io.checkpoint_name_map(other).items():
    v.assign(base[n])
  loaded = other.load_adapter(path, set_active=True)
  assert other.adapters[loaded] == model.adapters["a"].replace(flat=True)
  assert not other.bert.shared  # No MLP.
  np.testing.assert_allclose(other.predict(feats, verbose=0), want, atol=1e-5)
  # The prefixes are those of the NumPy MLP.
  keys, _ = np_prefixes(model.adapters["a"], weights(model), model.config, 0)
  np.testing.assert_allclose(
      weights(other)["bert/encoder/layer_0/attention/self/prefix_tuning/keys"],
      keys, atol=1e-5)


LAYER_ATTENTION_CASES = {
    "default_width": adapters.LayerAttentionConfig(num_heads=1),
    "with_tailor_attention": adapters.LayerAttentionConfig(reduced_size=6),
    "no_tailor_some_layers": adapters.LayerAttentionConfig(
        reduced_size=4, enable_tailor=False, aggregation_layers=[0, 2]),
    "tailor_without_attention": adapters.LayerAttentionConfig(
        reduced_size=4, num_heads=4, tailor_attention=False),
}


@pytest.mark.parametrize("case", sorted(LAYER_ATTENTION_CASES))
def test_layer_attention_matches_numpy(case):
  reference, w, want, _ = check_against_numpy(LAYER_ATTENTION_CASES[case])
  # The last layer alone is not the output.
  assert np.max(np.abs(want)) > 0.1
  changed = dict(w)
  changed["bert/encoder/layer_attention/key_projector/kernel"] = (
      w["bert/encoder/layer_attention/key_projector/kernel"] * 3.0)
  assert np.max(np.abs(reference(changed) - want)) > 1e-3


def test_layer_attention_trains_on_a_frozen_encoder():
  # No gradient reaches the encoder: the loss's gradients with respect to
  # every base variable are absent (not zero), and the encoder runs in
  # inference mode (no dropout: with the adapter's own dropout off,
  # training and inference give the same output).
  model = model_with(adapters.LayerAttentionConfig(reduced_size=6,
                                                   dropout=0.0))
  model.train_adapter("a")
  feats = as_features(*batch(model.config))
  view = model.adapter_view("a")
  trainable = set(view.trainable_names("adapters"))
  named = view.checkpoint_variables()
  with tf.GradientTape() as tape:
    logits = model(feats, training=True,
                   dropout_seed=tf.constant([1, 2], tf.int64))
    loss = tf.reduce_sum(logits ** 2)
  names = list(named)
  grads = tape.gradient(loss, [named[n][0] for n in names])
  for name, grad in zip(names, grads):
    if name in trainable:
      assert grad is not None, name
    else:
      assert grad is None, name
  assert any("layer_attention" in n for n in trainable)
  seq_train, _ = model.encode(feats, training=True,
                              dropout_seed=tf.constant([1, 2], tf.int64))
  seq_eval, _ = model.encode(feats)
  np.testing.assert_allclose(seq_train.numpy(), seq_eval.numpy(), atol=1e-6)
  # It runs alone.
  model.add_adapter("b", "lora")
  with pytest.raises(UserError, match="runs alone"):
    model(feats, setup=model.resolve_setup(["a", "b"]))
  with pytest.raises(UserError, match="cannot hold layer_attention"):
    adapters.ConfigUnion("layer_attention", "lora")


PROMPT_CASES = {
    "prompt_tuning": "prompt_tuning",
    "after_bos": adapters.PromptTuningConfig(prompt_length=3,
                                             combine="prefix_after_bos"),
}


@pytest.mark.parametrize("case", sorted(PROMPT_CASES))
def test_prompt_tuning_matches_numpy(case):
  reference, w, want, c = check_against_numpy(PROMPT_CASES[case])
  ids, _, _ = batch(tiny_config())
  assert want.shape[1] == ids.shape[1] + c.prompt_length
  changed = {k: (v * 2.0 if "prompt_embedding" in k else v)
             for k, v in w.items()}
  assert np.max(np.abs(reference(changed) - want)) > 1e-3


LORA_CASES = {
    "lora": "lora",
    "lora_everywhere": adapters.LoRAConfig(
        r=4, alpha=16, attn_matrices=["q", "k", "v"], intermediate_lora=True,
        output_lora=True, leave_out=[0]),
    "ia3": "ia3",
    "lora_gated": adapters.LoRAConfig(use_gating=True, intermediate_lora=True),
}


@pytest.mark.parametrize("case", sorted(LORA_CASES))
def test_lora_and_ia3_match_numpy(case):
  reference, w, want, _ = check_against_numpy(LORA_CASES[case])
  plain = {k: v for k, v in w.items() if "lora_" not in k}
  assert np.max(np.abs(reference(plain) - want)) > 1e-3


@pytest.mark.parametrize("case", ["lora_everywhere", "ia3"])
def test_merged_predicts_what_unmerged_does(case):
  model = model_with(LORA_CASES[case])
  cfg = model.config
  feats = as_features(*batch(cfg))
  before = {n: v.numpy() for n, v in checkpoint_io.checkpoint_name_map(
      model).items()}
  unmerged = model.predict(feats, verbose=0)
  model.merge_adapter("a")
  assert model.merged_adapters == ["a"]
  # The base projections changed; the predictions did not.
  changed = [n for n, v in checkpoint_io.checkpoint_name_map(model).items()
             if not np.array_equal(v.numpy(), before[n])]
  assert changed and all(n.endswith(("/kernel", "/bias")) for n in changed)
  merged = model.predict(feats, verbose=0)
  np.testing.assert_allclose(merged, unmerged, atol=1e-5)
  # Merged, the adapter's layers are out of the computation: with no
  # adapter active the model still computes the adapted function.
  model.set_active_adapters(None)
  seq_merged, _ = model.encode(feats)
  model.set_active_adapters("a")
  with pytest.raises(UserError, match="reset_adapter"):
    model.save_adapter("/tmp/never-written", "a")
  model.reset_adapter("a")
  assert model.merged_adapters == []
  for n, v in checkpoint_io.checkpoint_name_map(model).items():
    np.testing.assert_allclose(v.numpy(), before[n], atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(model.predict(feats, verbose=0), unmerged,
                             atol=1e-5)
  seq_active, _ = model.encode(feats)
  np.testing.assert_allclose(seq_merged.numpy(), seq_active.numpy(),
                             atol=1e-5)


def test_merge_refusals():
  model = model_with("lora")
  model.add_adapter("b", "lora")
  model.add_adapter("bn", "pfeiffer")
  with pytest.raises(UserError, match="cannot be merged"):
    model.merge_adapter("bn")
  model.merge_adapter("a")
  with pytest.raises(UserError, match=r"'a' is merged already"):
    model.merge_adapter("b")
  model.delete_adapter("a")  # Deleting a merged adapter takes it out first.
  model.merge_adapter("b")
  model.reset_adapter("b")
  model.add_adapter("gated", adapters.LoRAConfig(use_gating=True))
  before = {n: v.numpy() for n, v in
            checkpoint_io.checkpoint_name_map(model.view()).items()}
  with pytest.raises(UserError, match="gated LoRA .* cannot be merged"):
    model.merge_adapter("gated")
  assert not model.merged_adapters
  for n, v in checkpoint_io.checkpoint_name_map(model.view()).items():
    np.testing.assert_array_equal(v.numpy(), before[n], err_msg=n)


# ------------------------------------------------------------ names, counts

def test_every_adapterhub_name_is_accepted():
  for name in ("pfeiffer", "seq_bn", "houlsby", "double_seq_bn", "parallel",
               "pfeiffer+inv", "seq_bn_inv", "houlsby+inv", "double_seq_bn_inv",
               "par_bn", "scaled_parallel", "scaled_par_bn", "lora", "ia3",
               "prefix_tuning", "prefix_tuning_flat", "compacter",
               "compacter++", "mam", "prompt_tuning", "unipelt",
               "adapter-bert"):
    assert adapters.get_preset(name) is not None
  assert adapters.get_preset("pfeiffer") == adapters.get_preset("seq_bn")
  assert adapters.get_preset("houlsby") == bottleneck.DOUBLE_SEQ_BN
  assert adapters.get_preset("adapter-bert") == adapters.AdapterConfig()
  # AdapterHub's definitions: Compacter on houlsby, Compacter++ on pfeiffer,
  # mam = prefix tuning (MLP 800) + par_bn.
  assert adapters.get_preset("compacter") == bottleneck.DOUBLE_SEQ_BN.replace(
      phm_layer=True, reduction_factor=32, non_linearity="gelu")
  assert adapters.get_preset("compacter++") == bottleneck.SEQ_BN.replace(
      phm_layer=True, reduction_factor=32, non_linearity="gelu")
  assert adapters.get_preset("mam") == adapters.ConfigUnion(
      adapters.PrefixTuningConfig(bottleneck_size=800), "par_bn")


BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072,
                 hidden_act="gelu", hidden_dropout_prob=0.1,
                 attention_probs_dropout_prob=0.1,
                 max_position_embeddings=512, type_vocab_size=2,
                 initializer_range=0.02)

# AdapterHub 1.3.0's trainable parameters of each method at its default on
# the BERT-base config (`train_adapter`, head excluded): the first three are
# recorded by AdapterHub itself in ../shared/adapterhub/summary.json, the
# others were counted the same way (sum of numel of requires_grad
# parameters outside the head) in an AdapterHub environment. By hand:
#   seq_bn: 12 x (768*48 + 48 + 48*768 + 768)              =   894,528
#   double_seq_bn: twice that                              = 1,789,056
#   seq_bn_inv: seq_bn + NICE on the embeddings, F and G each
#     384*192 + 192 + 192*384 + 384 = 148,032              = 1,190,592
#   double_seq_bn_inv: double_seq_bn + 296,064             = 2,085,120
#   par_bn: 12 x (768*384 + 384 + 384*768 + 768)           = 7,091,712
#   scaled_par_bn: par_bn + 12 learned scalars             = 7,091,724
#   lora (r 8, q and v): 12 x 2 x (768*8 + 8*768)          =   294,912
#   ia3 (k, v, intermediate): 12 x (768 + 768 + 3072)      =    55,296
#   prefix_tuning (30 positions, MLP 768 -> 512 -> 12*2*768):
#     30*768 + 768*512 + 512 + 512*18432 + 18432           = 9,872,384
#   prefix_tuning_flat: 30 x 12 x 2 x 768                  =   552,960
#   mam: prefix_tuning with a 800-wide MLP (15,402,272) + par_bn
#                                                          = 22,493,984
#   compacter++ (bottleneck 768/32 = 24, phm_dim 4, rank 1):
#     down W_left 4*192*1 + W_right 4*1*6 + b 24 = 816,
#     up W_left 4*6*1 + W_right 4*1*192 + b 768 = 1,560;
#     12 x 2,376 + the shared rule 4*4*4                   =    28,576
#   compacter (at both places): 24 x 2,376 + 64            =    57,088
#   prompt_tuning: 10 soft tokens x 768                    =     7,680
#   unipelt: prefix tuning of 10 positions (9,857,024) + seq_bn (894,528)
#     + lora r 8 (294,912), and a gate Linear(768, 1) = 769 per gated
#     module: 12 prefixes + 12 bottlenecks + 24 LoRAs      = 11,083,376
ADAPTERHUB_BERT_BASE = {
    "seq_bn": 894_528, "double_seq_bn": 1_789_056, "seq_bn_inv": 1_190_592,
    "double_seq_bn_inv": 2_085_120, "par_bn": 7_091_712,
    "scaled_par_bn": 7_091_724, "lora": 294_912, "ia3": 55_296,
    "prefix_tuning": 9_872_384, "prefix_tuning_flat": 552_960,
    "mam": 22_493_984, "compacter++": 28_576, "compacter": 57_088,
    "prompt_tuning": 7_680, "unipelt": 11_083_376,
}


@pytest.mark.parametrize("name", sorted(ADAPTERHUB_BERT_BASE))
def test_bert_base_trainable_counts_equal_adapterhubs(name):
  from hub_checks import bert_base_counts  # pylint: disable=g-import-not-at-top
  counts = bert_base_counts(name)
  assert counts["trained"] == ADAPTERHUB_BERT_BASE[name]
  # The head: this toolkit's classifier reads BERT's (frozen) pooler, so it
  # trains 768 * 2 + 2 weights; AdapterHub's default head trains its own
  # dense 768 x 768 + tanh too (592,130).
  assert counts["head"] == 768 * 2 + 2


def test_bad_method_configs_are_one_line():
  cases = [
      ({"reduction_factor": 0}, "reduction_factor=0"),
      ({"non_linearity": "mish"}, "non_linearity='mish'"),
      ({"stochastic_depth": -0.1}, "stochastic_depth=-0.1"),
      ({"cross_adapter": True}, "cross_adapter=True"),
      ({"inv_adapter": "glow"}, "inv_adapter='glow'"),
      ({"inv_adapter": "nice"}, "inv_adapter_reduction_factor=None"),
      ({"mh_adapter": False, "output_adapter": False}, "nowhere"),
      ({"reduction": 4}, "unknown field(s) of a bn adapter config: reduction"),
  ]
  for fields, message in cases:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(
        ")", r"\)")):
      adapters.config_from_dict(dict({"mh_adapter": True}, **fields))
  with pytest.raises(UserError, match="r=0"):
    adapters.LoRAConfig(r=0)
  with pytest.raises(UserError, match="attn_matrices 'o'"):
    adapters.LoRAConfig(attn_matrices=["q", "o"])
  with pytest.raises(UserError, match="needs r=1"):
    adapters.IA3Config(r=2)
  with pytest.raises(UserError, match="use_gating=True is not supported"):
    adapters.IA3Config(use_gating=True)
  with pytest.raises(UserError, match="unknown adapter method 'prefix_magic'"):
    adapters.config_from_dict({"architecture": "prefix_magic"})
  # The other methods' fields.
  for make, message in (
      (lambda: adapters.PrefixTuningConfig(prefix_length=0),
       "prefix_length=0 must be an integer >= 1"),
      (lambda: adapters.config_from_dict({"architecture": "prefix_tuning",
                                          "prefix_len": 3}),
       "unknown field(s) of a prefix_tuning adapter config: prefix_len"),
      (lambda: adapters.PromptTuningConfig(combine="suffix"),
       "combine='suffix' is not one of"),
      (lambda: adapters.PromptTuningConfig(prompt_init="from_string"),
       "prompt_init='from_string' is not supported"),
      (lambda: adapters.LayerAttentionConfig(num_heads=0),
       "num_heads=0 must be an integer >= 1"),
      (lambda: adapters.BnConfig(phm_layer=True, shared_W_phm=True),
       "shared_W_phm=True"),
      (lambda: adapters.BnConfig(phm_layer=True, phm_c_init="zeros"),
       "phm_c_init='zeros'")):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(
        ")", r"\)")):
      make()
  model = modeling.BertAdapterModel(tiny_config())
  # Sizes that do not fit the model: named when the adapter is added, and
  # nothing is added.
  for config, message in (
      (adapters.LayerAttentionConfig(reduced_size=5),
       "reduced width 5 .* not divisible by num_heads=2"),
      (adapters.LayerAttentionConfig(aggregation_layers=[0, 7]),
       r"aggregation_layers \[7\] outside 0..2"),
      (adapters.get_preset("compacter"),
       r"bottleneck size 1 \(hidden size 16 // reduction_factor 32\)")):
    with pytest.raises(UserError, match=message):
      model.add_adapter("x", config)
    assert "x" not in model.adapters
  with pytest.raises(UserError, match="unknown adapter preset 'pfeifer'"):
    model.add_adapter("x", "pfeifer")


def test_adapterhub_config_dicts_load(tmp_path):
  # The "config" objects AdapterHub writes in adapter_config.json.
  seq_bn = dict(bottleneck.SEQ_BN.to_dict())
  del seq_bn["kind"]
  assert adapters.config_from_dict(seq_bn) == bottleneck.SEQ_BN
  lora = dict(adapters.LoRAConfig().to_dict(), architecture="lora")
  del lora["kind"]
  assert adapters.config_from_dict(lora) == adapters.LoRAConfig()
  ia3 = dict(adapters.IA3Config().to_dict(), architecture="lora")
  del ia3["kind"]
  assert adapters.config_from_dict(ia3).kind == "ia3"


SAVE_CASES = {
    "pfeiffer": "pfeiffer", "scaled_parallel": "scaled_parallel", "ia3": "ia3",
    # The shared PHM rule is saved with the adapter.
    "compacter++": adapters.get_preset("compacter++").replace(
        reduction_factor=4),
}


@pytest.mark.parametrize("case", sorted(SAVE_CASES))
def test_saved_adapter_loads_back_with_its_method(case, tmp_path):
  model = model_with(SAVE_CASES[case])
  feats = as_features(*batch(model.config))
  want = model.predict(feats, verbose=0)
  path = model.save_adapter(str(tmp_path / case), "a")
  # Another model of the same base (its weights copied by name), then the
  # adapter directory: the method comes from the directory.
  other = modeling.BertAdapterModel(model.config)
  base = checkpoint_io.checkpoint_name_map(model)
  for n, v in checkpoint_io.checkpoint_name_map(other).items():
    v.assign(base[n])
  loaded = other.load_adapter(path)
  other.set_active_adapters(loaded)
  assert other.adapters[loaded] == model.adapters["a"]
  np.testing.assert_allclose(other.predict(feats, verbose=0), want, atol=1e-6)


def test_preset_files_are_the_presets():
  import glob  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  folder = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "configs", "adapters")
  files = sorted(glob.glob(os.path.join(folder, "*.json")))
  assert len(files) >= 10
  for path in files:
    name = os.path.basename(path)[:-len(".json")]
    with open(path) as f:
      assert adapters.config_from_dict(json.load(f)) == adapters.get_preset(
          name), path


def changed_by_fit(model):
  """The checkpoint names whose values three epochs of `fit` on one
  batch (of 3 labels) change."""
  from adapter_bert.compute import optimization  # pylint: disable=g-import-not-at-top
  names = checkpoint_io.checkpoint_name_map(model)
  before = {n: v.numpy().copy() for n, v in names.items()}
  ids, mask, segs = batch(model.config)
  labels = np.array([0, 1, 2, 1], np.int32)
  model.compile(optimizer=optimization.create_optimizer(1e-2, 3, 1), seed=1)
  data = tf.data.Dataset.from_tensors((as_features(ids, mask, segs), labels))
  model.fit(data, epochs=3, verbose=0)
  return {n for n, v in names.items()
          if not np.array_equal(v.numpy(), before[n])}


@pytest.mark.parametrize("case", ["pfeiffer", "lora", "prefix_tuning"])
def test_fit_trains_only_the_method_and_its_head(case):
  model = model_with(case)
  model.add_adapter("other", case)
  trained = {n for n, _ in model.train_adapter("a")}
  assert trained and all(
      n in ("output_weights", "output_bias") or "/adapters/" in n
      or "lora_" in n or "prefix_tuning/" in n for n in trained)
  other_before = {n: v.numpy().copy() for n, v in
                  model.adapter_view("other").checkpoint_name_map().items()}
  assert changed_by_fit(model) == trained
  for n, v in model.adapter_view("other").checkpoint_name_map().items():
    if n not in ("output_weights", "output_bias"):
      np.testing.assert_array_equal(v.numpy(), other_before[n], err_msg=n)


@pytest.mark.parametrize("case", ["prefix_tuning", "prompt_tuning", "unipelt",
                                  "compacter++", "layer_attention"])
def test_methods_train_in_mixed_bfloat16(case):
  # The methods' own computations under a bfloat16 policy (Keras casts their
  # variables and float arguments): a training-mode step runs and its
  # float32 logits stay near the float32 model's (same weights).
  import keras  # pylint: disable=g-import-not-at-top
  config = {"compacter++": adapters.get_preset("compacter++").replace(
      reduction_factor=4),
            "layer_attention": adapters.LayerAttentionConfig(reduced_size=6,
                                                             dropout=0.0)
            }.get(case, case)
  feats = as_features(*batch(tiny_config()))
  want = model_with(config)(feats).numpy()
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = model_with(config)
    got = model(feats, training=True,
                dropout_seed=tf.constant([1, 2], tf.int64))
    inference = model(feats).numpy()
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert got.dtype == tf.float32 and np.all(np.isfinite(got.numpy()))
  scale = np.max(np.abs(want))
  assert np.max(np.abs(inference - want)) <= 0.05 * scale + 0.05
