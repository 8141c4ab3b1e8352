# coding=utf-8
"""AdapterDrop step times against skipped layers, and per-example routing.

AdapterDrop (`skip_layers`): for k = 0 .. L-1 lowest layers without their
adapters, the time of a training step (forward and gradients of the
adapter's variables: the backward pass stops at the lowest adapted layer)
and of an inference step (forward to the logits), each compiled once per k;
rounds interleave the k so that the machine's drift falls on all alike, the
figure of each is the median over its steps.

Routing (`MultiTask`): a batch whose examples belong to three tasks, each
through its own adapter and head, against `Parallel` of the three (every
task on every example, the alternative without routing); it checks that
each example's routed logits equal its own task's row of the Parallel
pass (<= 1e-5).

Frozen activations (`--parts=frozen`): a training step of the
layer-attention adapter (Basirat's; the encoder frozen) given the encoder's
stored states, against the same step running the frozen encoder; it checks
that both give the same loss and gradients (<= 1e-5).

Example:
  python scripts/lab/benchmark_composition.py --config=minilm --rounds=3 \
      --steps=5 --output=/tmp/composition.json
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, _REPO)
sys.path.insert(0, os.path.join(_REPO, "scripts", "lab"))
from adapter_bert.compute import tf_startup  # noqa: E402,F401  (before TensorFlow: oneDNN kernels)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import benchmark  # noqa: E402  (scripts/lab/benchmark.py: configs, machine)
from adapter_bert.adapters.composition import MultiTask, Parallel  # noqa: E402
from adapter_bert.model import modeling  # noqa: E402

TASKS = ("a", "b", "c")


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="minilm",
                 help="minilm, base (BERT-base) or a bert_config.json path")
  p.add_argument("--method", default="adapter-bert",
                 help="the adapters' config: a preset name or a JSON file")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--seq_length", type=int, default=128)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=5,
                 help="timed steps per variant and round")
  p.add_argument("--parts", default="adapter_drop,routing,frozen",
                 help="comma list of adapter_drop, routing, frozen")
  p.add_argument("--output", default=None, help="JSON file of the figures")
  return p.parse_args(argv)


def _model(config, method, names):
  """Random base, an adapter and a head of each name (their own init)."""
  model = modeling.BertAdapterModel(config)
  for name in names:
    model.add_adapter(name, method)
    model.add_classification_head(name, num_labels=2)
  return model


def _interleaved(steps, rounds, per_round, features):
  """{name: median seconds} of compiled steps run in interleaved rounds."""
  for step in steps.values():  # Compile and warm up.
    step(features)
    step(features)
  times = {name: [] for name in steps}
  for r in range(rounds):
    for name, step in steps.items():
      for _ in range(per_round):
        start = time.perf_counter()
        step(features)
        times[name].append(time.perf_counter() - start)
    benchmark.progress("round %d/%d: %s" % (r + 1, rounds, ", ".join(
        "%s %.1f ms" % (n, 1e3 * statistics.median(t[-per_round:]))
        for n, t in times.items())))
  return {n: statistics.median(t) for n, t in times.items()}


def adapter_drop(config, method, features, rounds, per_round):
  model = _model(config, method, ("a",))
  trainable = [v for _, v in model.train_adapter("a")]
  layers = config.num_hidden_layers
  train_steps, eval_steps = {}, {}
  for k in range(layers):
    model.set_active_adapters("a", skip_layers=range(k))
    setup = model.active_setup()

    def train(f, setup=setup):
      with tf.GradientTape() as tape:
        logits = model(f, training=True, setup=setup)
        loss = tf.reduce_mean(modeling.per_example_loss(
            logits, f["label_ids"], 2, False))
      grads = tape.gradient(loss, trainable)
      return loss, [g for g in grads if g is not None]

    def infer(f, setup=setup):
      return model(f, training=False, setup=setup)

    train_steps[k] = tf.function(train)
    eval_steps[k] = tf.function(infer)
  result = {"train_step_ms": {}, "eval_step_ms": {}}
  for label, steps in (("train_step_ms", train_steps),
                       ("eval_step_ms", eval_steps)):
    def run(f, step):
      out = step(f)
      return (out[0] if isinstance(out, tuple) else out).numpy()
    timed = _interleaved({k: (lambda f, s=s: run(f, s))
                          for k, s in steps.items()}, rounds, per_round,
                         features)
    result[label] = {str(k): 1e3 * t for k, t in timed.items()}
  return result


def routing(config, method, features, rounds, per_round):
  model = _model(config, method, TASKS)
  inputs = {k: v for k, v in features.items() if k != "label_ids"}
  batch = int(inputs["input_ids"].shape[0])
  task_ids = tf.constant(np.arange(batch) % len(TASKS), tf.int32)
  routed = dict(inputs, task_ids=task_ids)
  multi = model.resolve_setup(MultiTask(*TASKS))
  parallel = model.resolve_setup(Parallel(*TASKS))
  steps = {
      "multitask": tf.function(lambda f: model(f, setup=multi)),
      "parallel": tf.function(lambda f: model(f, setup=parallel)),
  }
  got, every = steps["multitask"](routed), steps["parallel"](inputs)
  diff = 0.0
  ids = task_ids.numpy()
  for t, name in enumerate(TASKS):
    rows = ids == t
    diff = max(diff, float(np.max(np.abs(
        got[name].numpy()[rows] - every[name].numpy()[rows]))))
  benchmark.progress("routed vs Parallel rows: max |diff| %.2e" % diff)
  if diff > 1e-5:
    raise SystemExit("benchmark_composition: routed rows differ by %.2e"
                     % diff)
  timed = _interleaved(
      {n: (lambda f, s=s: {k: v.numpy() for k, v in s(f).items()})
       for n, s in steps.items()}, rounds, per_round, routed)
  return {"step_ms": {n: 1e3 * t for n, t in timed.items()},
          "multitask_over_parallel": timed["multitask"] / timed["parallel"],
          "max_abs_logit_diff": diff, "tasks": len(TASKS)}


def frozen(config, features, rounds, per_round):
  """Layer attention: a train step on stored states against one running
  the frozen encoder (inference mode in both)."""
  from adapter_bert import adapters  # pylint: disable=g-import-not-at-top
  model = modeling.BertAdapterModel(config)
  width = max(config.hidden_size // 10, 5)  # The default reduced width,
  width += width % 2  # made even for its 2 heads (5 for tiny test configs).
  model.add_adapter("a", adapters.LayerAttentionConfig(reduced_size=width))
  model.add_classification_head("a", num_labels=2)
  trainable = [v for _, v in model.train_adapter("a")]
  setup = model.active_setup()
  states = model.bert.frozen_states(features["input_ids"],
                                    features["input_mask"],
                                    features["segment_ids"], setup)
  stored = dict(features, frozen_states=states)

  def train(f):
    with tf.GradientTape() as tape:
      logits = model(f, training=True, dropout_seed=tf.constant(
          [1, 2], tf.int64))
      loss = tf.reduce_mean(modeling.per_example_loss(
          logits, f["label_ids"], 2, False))
    return loss, tape.gradient(loss, trainable)

  step = tf.function(train)
  (loss_a, grads_a), (loss_b, grads_b) = step(features), step(stored)
  diff = max([abs(float(loss_a) - float(loss_b))] + [
      float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(grads_a, grads_b)])
  benchmark.progress("stored states vs encoder: max |diff| %.2e" % diff)
  if diff > 1e-5:
    raise SystemExit("benchmark_composition: stored states differ by %.2e"
                     % diff)
  timed = _interleaved(
      {"encoder": lambda f: step(features)[0].numpy(),
       "stored_states": lambda f: step(stored)[0].numpy()},
      rounds, per_round, features)
  return {"train_step_ms": {n: 1e3 * t for n, t in timed.items()},
          "speedup": timed["encoder"] / timed["stored_states"],
          "states_mb_per_batch": states.numpy().nbytes / 1e6,
          "max_abs_diff": diff}


def main(argv=None):
  args = _parse(argv)
  label, config_dict = benchmark.load_config(args.config)
  config = modeling.BertConfig.from_dict(config_dict)
  features = {k: tf.constant(v) for k, v in benchmark._random_features(  # pylint: disable=protected-access
      config_dict, args.batch_size, args.seq_length).items()}
  parts = [p for p in args.parts.split(",") if p]
  unknown = sorted(set(parts) - {"adapter_drop", "routing", "frozen"})
  if unknown:
    raise SystemExit("benchmark_composition: unknown --parts %s"
                     % ",".join(unknown))
  load_before = os.getloadavg()
  result = {
      "config": label, "method": args.method, "batch_size": args.batch_size,
      "seq_length": args.seq_length, "rounds": args.rounds,
      "steps_per_round": args.steps, "machine": benchmark.machine(),
  }
  if "adapter_drop" in parts:
    drop = result["adapter_drop"] = adapter_drop(
        config, args.method, features, args.rounds, args.steps)
    base_train = drop["train_step_ms"]["0"]
    base_eval = drop["eval_step_ms"]["0"]
    print("| layers skipped | train step (ms) | / none | inference step (ms) "
          "| / none |")
    print("|---:|---:|---:|---:|---:|")
    for k in sorted(drop["train_step_ms"], key=int):
      t, e = drop["train_step_ms"][k], drop["eval_step_ms"][k]
      print("| %s | %.1f | %.2f | %.1f | %.2f |" % (
          k, t, t / base_train, e, e / base_eval))
    print()
  if "routing" in parts:
    route = result["routing"] = routing(config, args.method, features,
                                        args.rounds, args.steps)
    print("| %d tasks in one batch | step (ms) |" % len(TASKS))
    print("|---|---:|")
    for n in ("multitask", "parallel"):
      print("| %s | %.1f |" % (n, route["step_ms"][n]))
    print()
  if "frozen" in parts:
    held = result["frozen"] = frozen(config, features, args.rounds,
                                     args.steps)
    print("| layer attention train step | ms |")
    print("|---|---:|")
    for n in ("encoder", "stored_states"):
      print("| %s | %.1f |" % (n, held["train_step_ms"][n]))
    print("| speedup | %.1fx |" % held["speedup"])
  result["loadavg_before"] = load_before
  result["loadavg_after"] = os.getloadavg()
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  return result


if __name__ == "__main__":
  main()
