# coding=utf-8
"""Measures training and inference against this machine's matrix-product peak.

One command, progress on stderr, a JSON file and a Markdown table out:

  1. peak: the fp32 matmul peak of this machine (median of several large
     square products, measured in this process and again in every worker);
  2. train: train-step throughput (examples/s) of the MiniLM and BERT-base
     configs (random weights), batch 32 x 128, modes `adapters` and `full`,
     after warm-up, median of several steps;
  3. the model FLOP/s of those steps and their ratio to the peak, counting
     forward = per layer and token 2 * (4H^2 + 2HI) + 4SH (S the padded
     sequence length; embeddings, adapters and head not counted), an
     `adapters` step = 2 x forward, a `full` step = 3 x forward; each timed
     step follows a peak-sized matmul probe and the ratio is the median of
     the per-step ratios (the machine's speed drifts when it is shared);
  4. eval: forward throughput and its FLOP ratio; ratio: adapters / full
     examples/s from steps of the two modes interleaved in one process;
  5. memory: the peak resident memory (VmHWM) of each training run (every
     run is its own process), and the resident memory after each of several
     epochs of a training + eval loop (growth from epoch to epoch);
  6. mrpc: MRPC training steps on the real data with fixed padding to 128
     and trimmed to length buckets, the same length-grouped batches (see
     run_classifier's --group_by_length): wall time, examples/s and the time
     of one epoch with every batch width compiled, and of a first epoch
     (the other widths' compiles added, timed apart from their steps);
  7. tokenization: scripts/lab/benchmark_tokenization.py's figures.

Each measurement of sections 2-6 runs in a fresh process (the script calls
itself with --worker), so peak memory and compile caches are per run (the
load average is recorded too).

Example:
  python scripts/lab/benchmark.py --output_dir=/tmp/benchmark
  python scripts/lab/benchmark.py --sections=peak,train --configs=minilm \
      --train_steps=3
"""

# pylint: disable=protected-access,g-import-not-at-top

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, _REPO)
from adapter_bert.compute import tf_startup  # noqa: E402,F401  (before TensorFlow: oneDNN kernels)

SECTIONS = ("peak", "train", "eval", "ratio", "memory", "mrpc",
            "tokenization")
_SHARED = os.path.join(os.path.dirname(_REPO), "shared")
_MINILM_DIR = os.path.join(_SHARED, "bert", "minilm_l6_h384_uncased")
# The shared MiniLM's bert_config.json, used when ../shared is absent.
MINILM_CONFIG = dict(
    vocab_size=30522, hidden_size=384, num_hidden_layers=6,
    num_attention_heads=12, intermediate_size=1536, hidden_act="gelu",
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02)
CONFIGS = {
    "minilm": os.path.join(_MINILM_DIR, "bert_config.json"),
    "base": os.path.join(_REPO, "configs", "bert", "bert_base_uncased.json"),
}


def _parse_flags(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sections", default=",".join(SECTIONS),
                      help="Comma-separated subset of: %s." % ", ".join(
                          SECTIONS))
  parser.add_argument("--configs", default="minilm,base",
                      help="Comma-separated model configs: minilm, base, or "
                      "paths of bert_config.json files.")
  parser.add_argument("--modes", default="adapters,full",
                      help="Comma-separated train modes for section train.")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--max_seq_length", type=int, default=128)
  parser.add_argument("--warmup_steps", type=int, default=1,
                      help="Untimed steps after the first (traced) one.")
  parser.add_argument("--train_steps", type=int, default=5,
                      help="Timed train steps of the MiniLM (and other "
                      "small) configs; the median is reported.")
  parser.add_argument("--base_train_steps", type=int, default=3,
                      help="Timed train steps of the BERT-base config.")
  parser.add_argument("--eval_steps", type=int, default=5,
                      help="Timed eval batches (3 for BERT-base at most).")
  parser.add_argument("--ratio_rounds", type=int, default=5,
                      help="Interleaved adapters/full step pairs per config "
                      "(3 for BERT-base at most) of section ratio.")
  parser.add_argument("--peak_size", type=int, default=4096,
                      help="Side of the square matmul of the peak.")
  parser.add_argument("--peak_repeats", type=int, default=5)
  parser.add_argument("--memory_epochs", type=int, default=4,
                      help="Epochs of the memory-growth run (MiniLM).")
  parser.add_argument("--memory_steps_per_epoch", type=int, default=3)
  parser.add_argument("--mrpc_steps", type=int, default=0,
                      help="Timed MRPC steps per variant; 0 = one whole "
                      "epoch (num_examples // batch_size steps).")
  parser.add_argument("--glue_dir", default=os.path.join(_SHARED,
                                                         "glue_data"))
  parser.add_argument("--vocab_file", default=os.path.join(_MINILM_DIR,
                                                           "vocab.txt"))
  parser.add_argument("--jit_compile", default="true",
                      choices=("true", "false", "always"),
                      help="Trainer jit_compile: true (XLA where it helps), "
                      "false, or always (whole step on any device).")
  parser.add_argument("--micro_batch_size", type=int, default=0,
                      help="Train-step micro-batch as run_classifier's flag: "
                      "0 = automatic (a CPU host slices a batch whose kept "
                      "activations exceed the budget). Where that slices, "
                      "the adapters step is also timed on the whole batch.")
  parser.add_argument("--output_dir", default="benchmark_results",
                      help="Where benchmark.json and benchmark.md go.")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--worker_args", default=None, help=argparse.SUPPRESS)
  flags = parser.parse_args(argv)
  unknown = set(_split(flags.sections)) - set(SECTIONS)
  if unknown:
    parser.error("unknown --sections: %s" % ", ".join(sorted(unknown)))
  return flags


def _split(text):
  return [s.strip() for s in text.split(",") if s.strip()]


def progress(message):
  sys.stderr.write("[benchmark %s] %s\n" % (time.strftime("%H:%M:%S"),
                                            message))
  sys.stderr.flush()


# ---------------------------------------------------------------- figures


def forward_flops(config, batch_size, seq_length):
  """Model FLOPs of one forward pass (the issue's count).

  Per layer and token 2 * (4H^2 + 2HI) + 4SH: the four H x H projections and
  the two feed-forward products, plus q·kᵀ and probs·v; embeddings, adapters
  and the head are not counted.
  """
  h = config["hidden_size"]
  i = config["intermediate_size"]
  per_token = 2 * (4 * h * h + 2 * h * i) + 4 * seq_length * h
  return config["num_hidden_layers"] * batch_size * seq_length * per_token


STEP_FORWARDS = {"adapters": 2, "full": 3, "eval": 1}


def load_config(name):
  """(label, config dict) of a --configs entry."""
  path = CONFIGS.get(name, name)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return name, json.load(f)
  if name == "minilm":
    return name, dict(MINILM_CONFIG)
  raise SystemExit("benchmark: config file not found: %s" % path)


def memory_status():
  """(VmRSS, VmHWM) of this process in bytes."""
  rss = hwm = None
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        rss = int(line.split()[1]) * 1024
      elif line.startswith("VmHWM:"):
        hwm = int(line.split()[1]) * 1024
  if hwm is None:  # Not Linux: ru_maxrss (KiB on Linux, bytes on macOS).
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024)
  return rss, hwm


def machine():
  """A description of this machine and software."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  mem = None
  try:
    with open("/proc/meminfo") as f:
      mem = int(f.readline().split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  import tensorflow as tf
  return {
      "cpu": cpu, "cpu_count": os.cpu_count(),
      "memory_gib": round(mem / 2**30, 1) if mem else None,
      "gpus": len(tf.config.list_physical_devices("GPU")),
      "tensorflow": tf.__version__, "python": platform.python_version(),
      "platform": platform.platform(),
  }


# ---------------------------------------------------------------- workers


def measure_peak(size, repeats):
  """fp32 GFLOP/s of a size^3 matmul: (median, best) of `repeats` runs."""
  import tensorflow as tf
  a = tf.random.normal([size, size], seed=1)
  b = tf.random.normal([size, size], seed=2)
  matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)[0, :1]))
  matmul(a, b).numpy()  # Warm-up (and oneDNN primitive creation).
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).numpy()
    times.append(time.perf_counter() - start)
  flops = 2.0 * size ** 3
  return flops / statistics.median(times) / 1e9, flops / min(times) / 1e9


def make_peak_probe(size):
  """A function running one size^3 fp32 matmul and returning its GFLOP/s.

  The operands are made for each call and dropped after it, so that they
  are not resident while the model runs (its peak memory is measured too).
  """
  import tensorflow as tf
  operands = tf.function(lambda: (
      tf.random.stateless_normal([size, size], seed=[1, 2]),
      tf.random.stateless_normal([size, size], seed=[3, 4])))
  matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)[0, :1]))
  matmul(*operands()).numpy()

  def probe():
    a, b = operands()
    a.numpy()  # Made before the clock starts.
    start = time.perf_counter()
    matmul(a, b).numpy()
    return 2.0 * size ** 3 / (time.perf_counter() - start) / 1e9
  return probe


def _paired_figures(flops, batch, times, probes):
  """Step figures, the FLOP ratio taken pairwise with the probe before each.

  On a shared machine the matmul rate drifts within minutes; the ratio of
  each step to the peak probed just before it, and the median of those
  ratios, measures the model's efficiency rather than the drift.
  """
  step_s = statistics.median(times)
  ratios = [flops / t / 1e9 / p for t, p in zip(times, probes)]
  return dict(step_times_s=times, step_s=step_s, probe_gflops=probes,
              examples_per_s=batch / step_s,
              model_gflops=flops / step_s / 1e9,
              peak_ratio=statistics.median(ratios),
              paired_peak_gflops=statistics.median(probes))


def _random_features(config, batch_size, seq_length, seed=0):
  import numpy as np
  rng = np.random.default_rng(seed)
  lengths = np.full([batch_size], seq_length)
  mask = (np.arange(seq_length)[None, :] < lengths[:, None]).astype(np.int32)
  return {
      "input_ids": rng.integers(1, config["vocab_size"],
                                (batch_size, seq_length)).astype(np.int32),
      "input_mask": mask,
      "segment_ids": (np.arange(seq_length)[None, :] >= seq_length // 2
                      ).astype(np.int32).repeat(batch_size, 0),
      "label_ids": rng.integers(0, 2, batch_size).astype(np.int32),
  }


def _jit_value(text):
  from adapter_bert.training import trainer as trainer_lib
  return {"true": True, "false": False, "always": trainer_lib.JIT_ALWAYS}[text]


def resolve_micro_batch_size(config, mode, batch_size, seq_length,
                             micro_batch_size):
  """run_classifier's rule: 0 = trainer_lib.auto_micro_batch_size."""
  import tensorflow as tf
  from adapter_bert.model import modeling
  from adapter_bert.training import trainer as trainer_lib
  if micro_batch_size:
    return min(micro_batch_size, batch_size)
  return trainer_lib.auto_micro_batch_size(
      modeling.BertConfig.from_dict(config), mode, batch_size, seq_length,
      tf.distribute.get_strategy())


def make_trainer(config, mode, batch_size, jit_compile, output_dir,
                 micro_batch_size=None):
  """A Trainer of a freshly initialised BertClassifier (2 labels)."""
  import tensorflow as tf
  from adapter_bert import adapters
  from adapter_bert.model import modeling
  from adapter_bert.compute import optimization
  from adapter_bert.training import trainer as trainer_lib
  model = modeling.BertClassifier(modeling.BertConfig.from_dict(config), 2,
                                  adapters.AdapterConfig())
  trainable = modeling.set_train_mode(model, mode)
  optimizer = optimization.create_optimizer(1e-4, 100000, 1000)
  return trainer_lib.Trainer(model, optimizer, trainable,
                          tf.distribute.get_strategy(), output_dir, 2, False,
                          batch_size, jit_compile=jit_compile,
                          micro_batch_size=micro_batch_size)


def _timed_steps(step_fn, warmup, steps, what, probe=None):
  """(first step s, timed step s[, peak probe GFLOP/s before each step])."""
  start = time.perf_counter()
  step_fn()
  first = time.perf_counter() - start
  progress("%s: first step (tracing, compiling) %.1f s" % (what, first))
  for i in range(warmup):
    start = time.perf_counter()
    step_fn()
    progress("%s: warm-up step %d %.2f s" % (what, i + 1,
                                             time.perf_counter() - start))
  times, probes = [], []
  for i in range(steps):
    if probe is not None:
      probes.append(probe())
    start = time.perf_counter()
    step_fn()
    times.append(time.perf_counter() - start)
    progress("%s: step %d/%d %.2f s%s" % (
        what, i + 1, steps, times[-1],
        " (peak probe %.1f GFLOP/s)" % probes[-1] if probes else ""))
  if probe is not None:
    return first, times, probes
  return first, times


def worker_train(args):
  """One (config, mode) training run; optionally eval afterwards."""
  import tensorflow as tf
  label, config = load_config(args["config"])
  what = "%s %s" % (label, args["mode"])
  batch, seq = args["batch_size"], args["max_seq_length"]
  features = _random_features(config, batch, seq)
  peak, _ = measure_peak(args["peak_size"], args["peak_repeats"])
  progress("%s: peak %.1f GFLOP/s" % (what, peak))
  micro = resolve_micro_batch_size(config, args["mode"], batch, seq,
                                   args.get("micro_batch_size", 0))
  result = {"config": label, "mode": args["mode"], "batch_size": batch,
            "max_seq_length": seq, "peak_gflops": peak,
            "micro_batch_size": micro}
  with tempfile.TemporaryDirectory() as tmp:
    trainer = make_trainer(config, args["mode"], batch,
                           _jit_value(args["jit_compile"]), tmp,
                           micro_batch_size=micro)
    result["rss_model_bytes"], _ = memory_status()
    trainer._build_train_loop()
    iterator = iter(tf.data.Dataset.from_tensors(features).repeat())
    one = tf.constant(1)

    def train_step():
      losses, _ = trainer._train_loop(iterator, one)
      losses.numpy()

    probe = make_peak_probe(args["peak_size"])
    first, times, probes = _timed_steps(train_step, args["warmup_steps"],
                                        args["steps"], what, probe=probe)
    _, result["train_peak_rss_bytes"] = memory_status()
    flops = STEP_FORWARDS[args["mode"]] * forward_flops(config, batch, seq)
    result.update(_paired_figures(flops, batch, times, probes),
                  first_step_s=first)
    progress("%s: %.1f examples/s, %.1f GFLOP/s = %.0f%% of peak (paired); "
             "peak RSS %.2f GiB" % (
                 what, result["examples_per_s"], result["model_gflops"],
                 100 * result["peak_ratio"],
                 result["train_peak_rss_bytes"] / 2**30))
    if args.get("eval_steps"):
      trainer._build_eval_step()
      inputs = {k: tf.constant(v) for k, v in features.items()}

      def eval_step():
        logits, _ = trainer._eval_step(inputs)
        logits.numpy()

      first, times, probes = _timed_steps(
          eval_step, args["warmup_steps"], args["eval_steps"], label + " eval",
          probe=probe)
      result["eval"] = _paired_figures(forward_flops(config, batch, seq),
                                       batch, times, probes)
      result["eval"]["first_step_s"] = first
      progress("%s eval: %.1f examples/s, %.0f%% of peak (paired)" % (
          label, result["eval"]["examples_per_s"],
          100 * result["eval"]["peak_ratio"]))
  return result


def worker_memory(args):
  """Resident memory after each epoch of train + eval loops (one process)."""
  import tensorflow as tf
  label, config = load_config(args["config"])
  batch, seq = args["batch_size"], args["max_seq_length"]
  rss = []
  with tempfile.TemporaryDirectory() as tmp:
    trainer = make_trainer(config, "adapters", batch,
                           _jit_value(args["jit_compile"]), tmp,
                           micro_batch_size=resolve_micro_batch_size(
                               config, "adapters", batch, seq,
                               args.get("micro_batch_size", 0)))
    train_features = [_random_features(config, batch, seq, seed=i)
                      for i in range(args["steps_per_epoch"])]
    eval_features = _random_features(config, batch, seq, seed=99)
    trainer._build_train_loop()
    for epoch in range(args["epochs"]):
      # A new dataset and iterator every epoch, as a multi-epoch run with
      # evaluation in between makes them.
      dataset = tf.data.Dataset.from_tensor_slices(
          {k: [f[k] for f in train_features] for k in train_features[0]})
      losses, _ = trainer._train_loop(
          iter(dataset), tf.constant(args["steps_per_epoch"]))
      losses.numpy()
      trainer.predict(tf.data.Dataset.from_tensors(eval_features))
      rss.append(memory_status()[0])
      progress("memory: epoch %d/%d RSS %.3f GiB" % (
          epoch + 1, args["epochs"], rss[-1] / 2**30))
  growth = [b - a for a, b in zip(rss[1:], rss[2:])] or [0]
  return {"config": label, "epochs": args["epochs"],
          "steps_per_epoch": args["steps_per_epoch"], "rss_bytes": rss,
          "growth_per_epoch_bytes": max(growth),
          "peak_rss_bytes": memory_status()[1]}


def worker_mrpc(args):
  """MRPC training steps with fixed padding, then with length buckets."""
  import tensorflow as tf
  from adapter_bert.data import input_pipeline
  from adapter_bert.training import run_config
  from adapter_bert.training import runner
  label, config = load_config(args["config"])
  batch, seq = args["batch_size"], args["max_seq_length"]
  result = {"config": label, "mode": "adapters", "batch_size": batch,
            "max_seq_length": seq}
  with tempfile.TemporaryDirectory() as tmp:
    data = input_pipeline.GlueData("mrpc", os.path.join(args["glue_dir"],
                                                        "MRPC"),
                                   args["vocab_file"], True, seq,
                                   os.path.join(tmp, "features"))
    start = time.perf_counter()
    num_examples = data.feature_file("train").num_examples
    result["feature_conversion_s"] = time.perf_counter() - start
    epoch_steps = num_examples // batch
    steps = args["steps"] or epoch_steps
    result.update(num_examples=num_examples, epoch_steps=epoch_steps,
                  timed_steps=steps)
    progress("mrpc: %d examples, %d steps an epoch, timing %d" % (
        num_examples, epoch_steps, steps))
    # run_classifier's buckets for this device and --jit_compile.
    boundaries = runner.bucket_boundaries(
        seq, _jit_value(args["jit_compile"]), tf.distribute.get_strategy())
    result["bucket_boundaries"] = list(boundaries)
    for name, bucket in (("fixed", False), ("bucketed", boundaries)):
      # The same length-grouped batches (run_classifier's default stream);
      # "fixed" pads each to max_seq_length, "bucketed" trims it.
      dataset = data.train_dataset(
          batch, seed=0, bucket=bucket,
          group_batches=run_config.GROUP_WINDOW_BATCHES)
      # The input pipeline alone: batches per second.
      start = time.perf_counter()
      widths = [int(f["input_ids"].shape[1])
                for f in dataset.take(steps + 1)]
      input_s = time.perf_counter() - start
      trainer = make_trainer(config, "adapters", batch,
                             _jit_value(args["jit_compile"]),
                             os.path.join(tmp, name),
                             micro_batch_size=resolve_micro_batch_size(
                                 config, "adapters", batch,
                                 args["max_seq_length"],
                                 args.get("micro_batch_size", 0)))
      trainer._build_train_loop()
      iterator = iter(dataset)
      start = time.perf_counter()
      trainer._train_loop(iterator, tf.constant(1))[0].numpy()
      first = time.perf_counter() - start
      # Every other width of the epoch is compiled before the clock starts,
      # as the first one is: what each epoch after the first costs. The
      # same batches run again, compiled, to tell the compiles from the
      # steps: in a first epoch those steps are among the epoch's own, so
      # first_epoch_s adds only the compiles.
      others = sorted(set(widths[1:]) - {widths[0]})

      def run_other_widths():
        """Seconds of one step at each of `others` (0 when there are none)."""
        if not others:
          return 0.0
        start = time.perf_counter()
        trainer._train_loop(iter(_warm_batches(dataset.element_spec, others)),
                            tf.constant(len(others)))[0].numpy()
        return time.perf_counter() - start

      warm = run_other_widths()  # compiles, then runs
      rerun = run_other_widths()  # runs, compiled
      compile_s = max(warm - rerun, 0.0)
      progress("mrpc %s: %d more widths compiled (one step each) in %.1f s; "
               "the same steps compiled %.1f s: compiles %.1f s"
               % (name, len(others), warm, rerun, compile_s))
      start = time.perf_counter()
      done = 0
      while done < steps:
        n = min(10, steps - done)
        trainer._train_loop(iterator, tf.constant(n))[0].numpy()
        done += n
        progress("mrpc %s: %d/%d steps, %.1f s" % (
            name, done, steps, time.perf_counter() - start))
      wall = time.perf_counter() - start
      result[name] = dict(
          first_step_s=first, wall_s=wall, examples_per_s=steps * batch / wall,
          epoch_s=wall / steps * epoch_steps, warm_widths=len(others),
          warm_s=warm, warm_rerun_s=rerun, compile_s=compile_s,
          first_epoch_s=wall / steps * epoch_steps + compile_s,
          mean_padded_length=sum(widths[1:]) / max(len(widths) - 1, 1),
          widths=len(set(widths)),
          input_batches_per_s=(steps + 1) / input_s)
      del trainer
  result["bucketed_speedup"] = (result["fixed"]["epoch_s"]
                                / result["bucketed"]["epoch_s"])
  result["first_epoch_speedup"] = (result["fixed"]["first_epoch_s"]
                                   / result["bucketed"]["first_epoch_s"])
  return result


def _warm_batches(element_spec, widths):
  """A dataset of one all-ones batch per width, typed as `element_spec`.

  Same element spec as the training stream, so the train loop runs it
  without a new trace and compiles each width's kernels.
  """
  import tensorflow as tf

  def batch_of(width):
    batch = {}
    for key, spec in element_spec.items():
      shape = [width if d is None else d for d in spec.shape.as_list()]
      batch[key] = tf.ones(tf.stack(shape), spec.dtype)
    return batch

  return tf.data.Dataset.from_tensor_slices(
      tf.constant(widths, tf.int32)).map(batch_of)


def worker_ratio(args):
  """adapters / full examples/s from steps interleaved in one process.

  Separate runs minutes apart on a shared machine see different speeds; here
  an adapters step and a full step (each with its automatic micro-batch)
  alternate, and the ratio of each pair's times is taken.
  """
  import tensorflow as tf
  label, config = load_config(args["config"])
  batch, seq = args["batch_size"], args["max_seq_length"]
  features = _random_features(config, batch, seq)
  steps = {}
  with tempfile.TemporaryDirectory() as tmp:
    for mode in ("adapters", "full"):
      trainer = make_trainer(
          config, mode, batch, _jit_value(args["jit_compile"]),
          os.path.join(tmp, mode),
          micro_batch_size=resolve_micro_batch_size(
              config, mode, batch, seq, args.get("micro_batch_size", 0)))
      trainer._build_train_loop()
      iterator = iter(tf.data.Dataset.from_tensors(features).repeat())
      one = tf.constant(1)

      def step(trainer=trainer, iterator=iterator, one=one):
        trainer._train_loop(iterator, one)[0].numpy()
      for _ in range(1 + args["warmup_steps"]):
        step()
      steps[mode] = step
    times = {"adapters": [], "full": []}
    for i in range(args["rounds"]):
      for mode in ("adapters", "full"):
        start = time.perf_counter()
        steps[mode]()
        times[mode].append(time.perf_counter() - start)
      progress("%s ratio: round %d/%d adapters %.2f s, full %.2f s" % (
          label, i + 1, args["rounds"], times["adapters"][-1],
          times["full"][-1]))
  ratios = [f / a for a, f in zip(times["adapters"], times["full"])]
  return {"config": label, "rounds": args["rounds"], "step_times_s": times,
          "ratio": statistics.median(ratios), "ratios": ratios}


WORKERS = {"train": worker_train, "memory": worker_memory,
           "mrpc": worker_mrpc, "ratio": worker_ratio}


def run_worker(name, args):
  """Runs a worker in a fresh Python process; returns its result dict."""
  command = [sys.executable, os.path.abspath(__file__), "--worker", name,
             "--worker_args", json.dumps(args)]
  proc = subprocess.run(command, stdout=subprocess.PIPE, text=True,
                        check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    raise SystemExit("benchmark: worker %s %s failed (exit %d)"
                     % (name, args, proc.returncode))
  return json.loads(lines[-1])


# ---------------------------------------------------------------- report


def _gib(n):
  return "%.2f GiB" % (n / 2**30) if n is not None else "n/a"


def markdown(result):
  """The Markdown report of a result dict."""
  m = result["machine"]
  out = ["Machine: %s, %d cores, %s GiB RAM, TensorFlow %s; load average "
         "%.1f at start, %.1f at end." % (
             m["cpu"], m["cpu_count"], m["memory_gib"], m["tensorflow"],
             result["load_start"][0], result["load_end"][0]), ""]
  if "peak" in result:
    p = result["peak"]
    out += ["fp32 matmul peak (%d^3, median of %d): **%.1f GFLOP/s** (best "
            "%.1f)." % (p["size"], p["repeats"], p["gflops"],
                        p["best_gflops"]), ""]
  rows = result.get("train", [])
  if rows:
    # The machine's limit: the best matmul rate seen anywhere in this run.
    peaks = [r["peak_gflops"] for r in rows]
    probes = [p for r in rows for part in (r, r.get("eval", {}))
              for p in part.get("probe_gflops", [])]
    best = max(peaks + probes + ([result["peak"]["best_gflops"]]
                                 if "peak" in result else []))
    out += ["Peak measured in each train worker before its steps: %s "
            "GFLOP/s; peak probes paired with the timed steps: %.1f-%.1f; "
            "best seen in this run %.1f." % (
                ", ".join("%.1f" % p for p in peaks),
                min(probes or [0]), max(probes or [0]), best), ""]
    out += ["| config | step | micro-batch | examples/s | model GFLOP/s | "
            "% of peak (paired) | % of best peak | peak RSS |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
      micro = r.get("micro_batch_size", r["batch_size"])
      out.append("| %s | train %s | %s | %.1f | %.1f | %.0f%% | %.0f%% | "
                 "%s |" % (
                     r["config"], r["mode"],
                     "%d%s" % (micro, " (auto)" if r.get("auto_micro", True)
                               else ""),
                     r["examples_per_s"], r["model_gflops"],
                     100 * r["peak_ratio"], 100 * r["model_gflops"] / best,
                     _gib(r["train_peak_rss_bytes"])))
      if "eval" in r:
        e = r["eval"]
        out.append("| %s | eval | | %.1f | %.1f | %.0f%% | %.0f%% | |" % (
            r["config"], e["examples_per_s"], e["model_gflops"],
            100 * e["peak_ratio"], 100 * e["model_gflops"] / best))
    for label in sorted({r["config"] for r in rows}):
      by_mode = {r["mode"]: r for r in rows
                 if r["config"] == label and r.get("auto_micro", True)}
      if "adapters" in by_mode and "full" in by_mode:
        out.append("")
        out.append("%s: adapters / full examples/s = %.2fx (separate "
                   "runs)" % (
            label, by_mode["adapters"]["examples_per_s"]
            / by_mode["full"]["examples_per_s"]))
    out.append("")
    out.append("Batch %d x %d; FLOPs per layer and token 2(4H^2+2HI)+4SH, "
               "adapters step = 2x forward, full = 3x. %% of peak (paired): "
               "each timed step follows a peak-sized matmul in the same "
               "process; the median over steps of step rate / that "
               "matmul's rate." % (
                   rows[0]["batch_size"], rows[0]["max_seq_length"]))
    out.append("")
  for r in result.get("ratio", []):
    out += ["%s: adapters / full examples/s, steps interleaved in one process "
            "(%d pairs): **%.2fx** (pairs %s)." % (
                r["config"], r["rounds"], r["ratio"],
                ", ".join("%.2f" % x for x in r["ratios"])), ""]
  if "memory" in result:
    mem = result["memory"]
    out += ["Memory, %s adapters, %d epochs of %d steps + eval: RSS %s; "
            "largest growth between later epochs %+.1f MiB." % (
                mem["config"], mem["epochs"], mem["steps_per_epoch"],
                ", ".join(_gib(b) for b in mem["rss_bytes"]),
                mem["growth_per_epoch_bytes"] / 2**20), ""]
  if "mrpc" in result:
    r = result["mrpc"]
    out += ["| MRPC train (%s adapters) | mean padded length | examples/s "
            "| epoch (%d steps) |" % (r["config"], r["epoch_steps"]),
            "|---|---|---|---|"]
    for name in ("fixed", "bucketed"):
      v = r[name]
      out.append("| %s | %.1f | %.1f | %.0f s |" % (
          name, v["mean_padded_length"], v["examples_per_s"], v["epoch_s"]))
    b = r["bucketed"]
    out += ["", "Bucketed epoch %.2fx faster (%s; %d batch widths, bucket "
            "step %d), each width compiled before the clock starts. A first "
            "epoch also compiles: %d more widths took %.0f s, one step each "
            "included (%.0f s again compiled: %.0f s of compiles), %.2fx "
            "counting the compiles. Input pipeline alone: "
            "%.0f (fixed) / %.0f (bucketed) batches/s." % (
                r["bucketed_speedup"],
                "whole epoch" if r["timed_steps"] >= r["epoch_steps"]
                else "timed %d of %d steps, epoch extrapolated" % (
                    r["timed_steps"], r["epoch_steps"]),
                b.get("widths", 0),
                r.get("bucket_boundaries", [0])[0],
                b.get("warm_widths", 0), b.get("warm_s", 0.0),
                b.get("warm_rerun_s", 0.0),
                b.get("compile_s", b.get("warm_s", 0.0)),
                r.get("first_epoch_speedup", r["bucketed_speedup"]),
                r["fixed"]["input_batches_per_s"],
                r["bucketed"]["input_batches_per_s"]), ""]
  if "tokenization" in result:
    out += ["Tokenization:", "", result["tokenization_markdown"], ""]
  out += ["Command: `%s`" % result["command"]]
  return "\n".join(out) + "\n"


def main(argv=None):
  flags = _parse_flags(argv if argv is not None else sys.argv[1:])
  if flags.worker:
    print(json.dumps(WORKERS[flags.worker](json.loads(flags.worker_args))))
    return 0
  from adapter_bert.storage import atomic_io
  sections = _split(flags.sections)
  started = time.time()
  result = {"command": " ".join(["python", "scripts/lab/benchmark.py"]
                                + (argv if argv is not None
                                   else sys.argv[1:])),
            "load_start": os.getloadavg(), "machine": machine(),
            "jit_compile": flags.jit_compile}
  progress("machine: %s" % result["machine"])
  if "peak" in sections:
    gflops, best = measure_peak(flags.peak_size, flags.peak_repeats)
    result["peak"] = {"size": flags.peak_size, "repeats": flags.peak_repeats,
                      "gflops": gflops, "best_gflops": best}
    progress("peak: %.1f GFLOP/s (best %.1f)" % (gflops, best))
  common = {"batch_size": flags.batch_size,
            "micro_batch_size": flags.micro_batch_size,
            "max_seq_length": flags.max_seq_length,
            "warmup_steps": flags.warmup_steps,
            "peak_size": flags.peak_size, "peak_repeats": 3,
            "jit_compile": flags.jit_compile}
  if "train" in sections or "eval" in sections:
    result["train"] = []
    modes = _split(flags.modes) if "train" in sections else ["adapters"]
    for config in _split(flags.configs):
      base = load_config(config)[1]["hidden_size"] >= 768
      for i, mode in enumerate(modes):
        args = dict(common, config=config, mode=mode,
                    steps=flags.base_train_steps if base else flags.train_steps,
                    eval_steps=(min(flags.eval_steps, 3) if base
                                else flags.eval_steps)
                    if "eval" in sections and i == 0 else 0)
        args["micro_batch_size"] = flags.micro_batch_size
        progress("train: %s %s" % (config, mode))
        result["train"].append(run_worker("train", args))
        result["train"][-1]["auto_micro"] = not flags.micro_batch_size
        if (mode == "adapters" and "train" in sections
            and result["train"][-1]["micro_batch_size"] < flags.batch_size):
          # What slicing saves: the same step on the whole batch.
          progress("train: %s %s, whole batch" % (config, mode))
          whole = run_worker("train", dict(
              args, eval_steps=0, micro_batch_size=flags.batch_size))
          whole["auto_micro"] = False
          result["train"].append(whole)
  if "ratio" in sections:
    result["ratio"] = []
    for config in _split(flags.configs):
      base = load_config(config)[1]["hidden_size"] >= 768
      progress("ratio: %s adapters / full, interleaved" % config)
      result["ratio"].append(run_worker("ratio", dict(
          common, config=config,
          rounds=min(flags.ratio_rounds, 3) if base else flags.ratio_rounds)))
  if "memory" in sections:
    progress("memory: epochs of a MiniLM adapter run")
    result["memory"] = run_worker("memory", dict(
        common, config="minilm", epochs=flags.memory_epochs,
        steps_per_epoch=flags.memory_steps_per_epoch))
  if "mrpc" in sections:
    if not os.path.isdir(os.path.join(flags.glue_dir, "MRPC")):
      progress("mrpc: skipped, no %s/MRPC" % flags.glue_dir)
    else:
      result["mrpc"] = run_worker("mrpc", dict(
          common, config="minilm", steps=flags.mrpc_steps,
          glue_dir=flags.glue_dir, vocab_file=flags.vocab_file))
  if "tokenization" in sections:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import benchmark_tokenization
    progress("tokenization")
    tok_flags = benchmark_tokenization._parse_flags(
        ["--vocab_file", flags.vocab_file, "--repeats", "1"])
    result["tokenization"] = benchmark_tokenization.run(tok_flags)
    result["tokenization_markdown"] = benchmark_tokenization.markdown_table(
        result["tokenization"])
  result["load_end"] = os.getloadavg()
  result["wall_s"] = time.time() - started
  os.makedirs(flags.output_dir, exist_ok=True)
  text = markdown(result)
  atomic_io.atomic_write_text(os.path.join(flags.output_dir,
                                           "benchmark.json"),
                              json.dumps(result, indent=2) + "\n")
  atomic_io.atomic_write_text(os.path.join(flags.output_dir, "benchmark.md"),
                              text)
  print(text)
  progress("done in %.0f s; wrote %s/benchmark.{json,md}" % (
      result["wall_s"], flags.output_dir))
  return 0


if __name__ == "__main__":
  sys.exit(main())
