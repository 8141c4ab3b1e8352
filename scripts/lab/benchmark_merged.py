# coding=utf-8
"""The eval step of a merged LoRA / (IA)^3 adapter against the plain model.

`merge_adapter(name)` folds the adapter into the frozen projections, so a
merged model should cost what the model without adapters costs. This
measures it: three models of one config with the same random base (plain
with its head only; the adapter active, unmerged; the adapter merged), the
same batch, each step a compiled forward pass to the logits; rounds
interleave the three so that the machine's drift falls on all alike, and
the figure of each is the median over all its steps. It also checks that
merged and unmerged give the same logits (<= 1e-5).

Example:
  python scripts/lab/benchmark_merged.py --config=minilm --method=lora \
      --rounds=5 --steps=10 --output=/tmp/merged.json
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
from adapter_bert.storage import checkpoint_io  # noqa: E402
from adapter_bert.model import modeling  # noqa: E402


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="minilm",
                 help="minilm, bert_base or a bert_config.json path")
  p.add_argument("--method", default="lora",
                 help="a mergeable adapter config: lora, ia3 or a JSON file")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--seq_length", type=int, default=128)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=10,
                 help="timed steps per model and round")
  p.add_argument("--output", default=None, help="JSON file of the figures")
  return p.parse_args(argv)


def build(config, method, variant, base_values, seed=0):
  """A model of `variant` (plain | unmerged | merged) on the given base."""
  model = modeling.BertAdapterModel(config)
  model.add_classification_head("task", num_labels=2)
  if variant != "plain":
    model.add_adapter("task", method, set_active=True)
    rng = np.random.default_rng(seed)
    # Non-trivial adapter weights (LoRA's B starts at zero).
    for name, v in model.adapter_view("task").checkpoint_name_map().items():
      if "lora_" in name:
        v.assign((rng.normal(0.0, 0.05, v.shape)
                  + (1.0 if len(v.shape) == 1 else 0.0)).astype(np.float32))
  for name, v in checkpoint_io.checkpoint_name_map(model.view()).items():
    if name in base_values:
      v.assign(base_values[name])
  model.active_head = "task"
  if variant == "merged":
    model.merge_adapter("task")
  return model


def main(argv=None):
  args = _parse(argv)
  label, config_dict = benchmark.load_config(args.config)
  config = modeling.BertConfig.from_dict(config_dict)
  features = {k: tf.constant(v) for k, v in benchmark._random_features(  # pylint: disable=protected-access
      config_dict, args.batch_size, args.seq_length).items()
              if k != "label_ids"}
  plain = build(config, args.method, "plain", {})
  # The plain model's base and head, copied into the other two.
  base = {n: v.numpy() for n, v in
          checkpoint_io.checkpoint_name_map(plain.view()).items()}
  models = {"plain": plain,
            "unmerged": build(config, args.method, "unmerged", base),
            "merged": build(config, args.method, "merged", base)}
  steps = {name: tf.function(lambda f, m=m: m(f, training=False))
           for name, m in models.items()}
  logits = {name: step(features).numpy() for name, step in steps.items()}
  diff = float(np.max(np.abs(logits["merged"] - logits["unmerged"])))
  benchmark.progress("merged vs unmerged logits: max |diff| %.2e" % diff)
  if diff > 1e-5:
    raise SystemExit("benchmark_merged: merged and unmerged differ by %.2e"
                     % diff)
  for step in steps.values():  # Warm-up after the compile.
    step(features).numpy()
  times = {name: [] for name in steps}
  load_before = os.getloadavg()
  for r in range(args.rounds):
    for name, step in steps.items():
      for _ in range(args.steps):
        start = time.perf_counter()
        step(features).numpy()
        times[name].append(time.perf_counter() - start)
    benchmark.progress("round %d/%d: %s" % (r + 1, args.rounds, ", ".join(
        "%s %.1f ms" % (n, 1e3 * statistics.median(t[-args.steps:]))
        for n, t in times.items())))
  median = {n: statistics.median(t) for n, t in times.items()}
  result = {
      "config": label, "method": args.method, "batch_size": args.batch_size,
      "seq_length": args.seq_length, "rounds": args.rounds,
      "steps_per_round": args.steps,
      "median_step_ms": {n: 1e3 * m for n, m in median.items()},
      "merged_over_plain": median["merged"] / median["plain"],
      "unmerged_over_plain": median["unmerged"] / median["plain"],
      "max_abs_logit_diff_merged_unmerged": diff,
      "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
      "machine": benchmark.machine(),
  }
  print("| model | eval step (ms, median) | / plain |")
  print("|---|---:|---:|")
  for n in ("plain", "unmerged", "merged"):
    print("| %s | %.1f | %.3f |" % (n, 1e3 * median[n],
                                    median[n] / median["plain"]))
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  return result


if __name__ == "__main__":
  main()
