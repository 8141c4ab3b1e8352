"""This toolkit against AdapterHub (PyTorch) on the same CPU, side by side.

    python scripts/lab/benchmark_vs_adapterhub.py \
        --adapterhub_python=/path/to/adapterhub-venv/bin/python

Each side runs in processes of its own (one per measurement), so that
neither's thread pools or allocator state touch the other's figures. The
AdapterHub side runs in `--adapterhub_python` (default $ADAPTERHUB_PYTHON,
else this Python when it imports torch and AdapterHub's `adapters`, as after
`pip install "torch==2.13.0+cpu" adapters==1.3.0`). Without one, the
AdapterHub side is skipped, said so, and only this toolkit's figures are
printed.

What runs, for each --configs entry (the shared MiniLM, BERT-base): the same
model size, batch, sequence length and recipe (adapter-bert: bottleneck 64
after the attention and feed-forward outputs, tanh GELU, adapters +
LayerNorms + head trained, AdamW-style decay 0.01, clip 1.0), in fresh
processes, the two libraries alternating, --rounds times:

  * train step: median seconds of a training step on one random batch of
    full length (after --warmup_steps), and the process's peak resident
    memory after training;
  * eval step: median seconds of a forward pass on the same batch;
  * MRPC epoch (--epoch_configs, needs ../shared/glue_data): one whole
    training epoch on the real data with each library's best batching (this
    toolkit: run_classifier's length-grouped batches trimmed to its length
    buckets; AdapterHub: length-grouped batches padded to their longest
    example, as HF Trainer's group_by_length with dynamic padding), compiles
    and warm-up included, and each side's start-up (feature conversion or
    tokenization, model building).

Ratios are AdapterHub's time over this toolkit's (above 1: this toolkit is
faster) and this toolkit's memory over AdapterHub's. Writes
--output_dir/benchmark_vs_adapterhub.{json,md}.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(_HERE))
sys.path.insert(0, _REPO)
sys.path.insert(0, _HERE)

import benchmark  # noqa: E402  (scripts/lab/benchmark.py: configs, trainers)


def _imports_adapterhub():
  """Whether this Python has torch and AdapterHub's `adapters` (already
  imported, or found: find_spec refuses a module imported without a spec,
  as AdapterHub's lazy package is)."""
  for name in ("torch", "adapters"):
    if name in sys.modules:
      continue
    try:
      if importlib.util.find_spec(name) is None:
        return False
    except (ImportError, ValueError):
      return False
  return True


def _parse_flags(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--adapterhub_python",
                      default=os.environ.get("ADAPTERHUB_PYTHON") or (
                          sys.executable if _imports_adapterhub() else None),
                      help="Python of an environment with torch and "
                      "AdapterHub's adapters (default $ADAPTERHUB_PYTHON, "
                      "else this Python when it has them).")
  parser.add_argument("--configs", default="minilm,base")
  parser.add_argument("--epoch_configs", default="minilm",
                      help="Configs whose MRPC epoch is timed ('' = none).")
  parser.add_argument("--rounds", type=int, default=2,
                      help="Alternating rounds of the step measurements.")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--max_seq_length", type=int, default=128)
  parser.add_argument("--warmup_steps", type=int, default=1)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--base_steps", type=int, default=3,
                      help="Timed steps of a config of hidden size >= 768.")
  parser.add_argument("--glue_dir", default=os.path.join(
      os.path.dirname(_REPO), "shared", "glue_data"))
  parser.add_argument("--vocab_file", default=os.path.join(
      benchmark._MINILM_DIR, "vocab.txt"))
  parser.add_argument("--output_dir", default="benchmark_results")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


progress = benchmark.progress


# ------------------------------------------------- this toolkit's workers


def ours_steps(args):
  """Train and eval step times of run_classifier's trainer, one process."""
  import tensorflow as tf
  config, batch, seq = args["config"], args["batch_size"], args["max_seq_length"]
  features = benchmark._random_features(config, batch, seq)
  with tempfile.TemporaryDirectory() as tmp:
    trainer = benchmark.make_trainer(
        config, "adapters", batch, True, tmp,
        micro_batch_size=benchmark.resolve_micro_batch_size(
            config, "adapters", batch, seq, 0))
    trainer._build_train_loop()
    iterator = iter(tf.data.Dataset.from_tensors(features).repeat())
    one = tf.constant(1)

    def train_step():
      trainer._train_loop(iterator, one)[0].numpy()

    first, times = benchmark._timed_steps(train_step, args["warmup_steps"],
                                          args["steps"], "ours train")
    result = {"train_step_s": statistics.median(times), "train_times_s": times,
              "first_step_s": first,
              "train_peak_rss_bytes": benchmark.memory_status()[1]}
    trainer._build_eval_step()
    inputs = {k: tf.constant(v) for k, v in features.items()}

    def eval_step():
      trainer._eval_step(inputs)[0].numpy()

    _, eval_times = benchmark._timed_steps(eval_step, args["warmup_steps"],
                                           args["steps"], "ours eval")
    result.update(eval_step_s=statistics.median(eval_times),
                  eval_times_s=eval_times)
  return result


def ours_epoch(args):
  """One MRPC training epoch as run_classifier runs it (buckets, groups)."""
  import tensorflow as tf
  from adapter_bert.data import glue_processors, input_pipeline
  from adapter_bert.training import run_config, runner
  config, batch, seq = args["config"], args["batch_size"], args["max_seq_length"]
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    data = input_pipeline.GlueData(
        glue_processors.get_processor("MRPC"),
        os.path.join(args["glue_dir"], "MRPC"), args["vocab_file"], True, seq,
        os.path.join(tmp, "features"))
    num_examples = data.feature_file("train").num_examples
    convert_s = time.perf_counter() - start
    steps = num_examples // batch
    start = time.perf_counter()
    trainer = benchmark.make_trainer(
        config, "adapters", batch, True, tmp,
        micro_batch_size=benchmark.resolve_micro_batch_size(
            config, "adapters", batch, seq, 0))
    trainer._build_train_loop()
    build_s = time.perf_counter() - start
    dataset = data.train_dataset(
        batch, seed=0,
        bucket=runner.bucket_boundaries(seq, True,
                                        tf.distribute.get_strategy()),
        group_batches=run_config.GROUP_WINDOW_BATCHES)
    iterator = iter(dataset)
    start = time.perf_counter()
    done = 0
    while done < steps:
      n = min(20, steps - done)
      trainer._train_loop(iterator, tf.constant(n))[0].numpy()
      done += n
      progress("ours epoch: %d/%d steps %.1f s" % (
          done, steps, time.perf_counter() - start))
    epoch_s = time.perf_counter() - start
  return {"epoch_s": epoch_s, "epoch_steps": steps,
          "startup_s": convert_s + build_s, "tokenize_s": convert_s,
          "build_s": build_s, "peak_rss_bytes": benchmark.memory_status()[1]}


WORKERS = {"steps": ours_steps, "epoch": ours_epoch}


def run_ours(what, args):
  command = [sys.executable, os.path.abspath(__file__), "--worker",
             json.dumps(dict(args, what=what))]
  return _run(command, _REPO, "ours " + what)


def run_adapterhub(python, what, args):
  command = [python, os.path.join(_HERE, "adapterhub_side.py"),
             json.dumps(dict(args, what=what))]
  with tempfile.TemporaryDirectory() as cwd:
    return _run(command, cwd, "adapterhub " + what)


def _run(command, cwd, what):
  proc = subprocess.run(command, cwd=cwd, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
    raise SystemExit("benchmark_vs_adapterhub: %s failed (exit %d): %s"
                     % (what, proc.returncode, tail[0]))
  return json.loads(lines[-1])


def adapterhub_available(python):
  """(versions dict, None) or (None, why it is skipped)."""
  if not python:
    return None, ("no AdapterHub environment given (--adapterhub_python or "
                  "$ADAPTERHUB_PYTHON)")
  if not os.path.exists(python):
    return None, "--adapterhub_python=%s does not exist" % python
  try:
    return run_adapterhub(python, "versions", {}), None
  except SystemExit as e:
    return None, "%s cannot run AdapterHub: %s" % (python, e)


# ------------------------------------------------------------------ report


def _ratio(a, b):
  return a / b if a and b else None


def summarize(rows):
  """Median over rounds of each side's figures, and the ratios."""
  out = {}
  for side in ("ours", "adapterhub"):
    got = [r[side] for r in rows if r.get(side)]
    if got:
      out[side] = {k: statistics.median(g[k] for g in got)
                   for k in ("train_step_s", "eval_step_s",
                             "train_peak_rss_bytes")}
  if "ours" in out and "adapterhub" in out:
    ours, ah = out["ours"], out["adapterhub"]
    out["train_speedup"] = _ratio(ah["train_step_s"], ours["train_step_s"])
    out["eval_speedup"] = _ratio(ah["eval_step_s"], ours["eval_step_s"])
    out["memory_ratio"] = _ratio(ours["train_peak_rss_bytes"],
                                 ah["train_peak_rss_bytes"])
  return out


def markdown(result):
  batch, seq = result["batch_size"], result["max_seq_length"]
  lines = ["# This toolkit vs AdapterHub, same CPU", "",
           "`%s`" % result["command"], "",
           "Machine: %s; load average %s at start, %s at end. AdapterHub: %s."
           % (result["machine"],
              "/".join("%.2f" % x for x in result["load_start"]),
              "/".join("%.2f" % x for x in result["load_end"]),
              result.get("adapterhub_versions") or
              "skipped (%s)" % result.get("adapterhub_skipped")), "",
           "Batch %d x %d tokens, adapter-bert recipe, medians of %d "
           "alternating rounds." % (batch, seq, result["rounds"]), "",
           "| config | train ex/s ours | train ex/s AdapterHub | train x | "
           "eval ex/s ours | eval ex/s AdapterHub | eval x | peak RSS ours | "
           "peak RSS AdapterHub | memory ratio |",
           "|---|---|---|---|---|---|---|---|---|---|"]

  def fmt(x, pattern):
    return pattern % x if x is not None else "n/a"

  for name, s in result["steps"].items():
    ours, ah = s.get("ours", {}), s.get("adapterhub", {})
    lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        name,
        fmt(batch / ours["train_step_s"] if ours else None, "%.1f"),
        fmt(batch / ah["train_step_s"] if ah else None, "%.1f"),
        fmt(s.get("train_speedup"), "%.2fx"),
        fmt(batch / ours["eval_step_s"] if ours else None, "%.1f"),
        fmt(batch / ah["eval_step_s"] if ah else None, "%.1f"),
        fmt(s.get("eval_speedup"), "%.2fx"),
        fmt(ours.get("train_peak_rss_bytes", 0) / 2**30 or None, "%.2f GiB"),
        fmt(ah.get("train_peak_rss_bytes", 0) / 2**30 or None, "%.2f GiB"),
        fmt(s.get("memory_ratio"), "%.2f")))
  if result["epochs"]:
    lines += ["", "MRPC training epoch (%d steps), each library's best "
              "batching:" % next(iter(result["epochs"].values()))["ours"][
                  "epoch_steps"], "",
              "| config | epoch ours | epoch AdapterHub | x | start-up ours | "
              "start-up AdapterHub |", "|---|---|---|---|---|---|"]
    for name, e in result["epochs"].items():
      ours, ah = e["ours"], e.get("adapterhub")
      lines.append("| %s | %.0f s | %s | %s | %.1f s | %s |" % (
          name, ours["epoch_s"], fmt(ah and ah["epoch_s"], "%.0f s"),
          fmt(ah and ours["epoch_s"] and ah["epoch_s"] / ours["epoch_s"],
              "%.2fx"),
          ours["startup_s"], fmt(ah and ah["startup_s"], "%.1f s")))
  return "\n".join(lines) + "\n"


def main(argv=None):
  argv = argv if argv is not None else sys.argv[1:]
  flags = _parse_flags(argv)
  if flags.worker:
    args = json.loads(flags.worker)
    print(json.dumps(WORKERS[args.pop("what")](args)))
    return 0
  from adapter_bert.storage import atomic_io
  started = time.time()
  versions, skipped = adapterhub_available(flags.adapterhub_python)
  if skipped:
    progress("AdapterHub side skipped: %s. Only this toolkit's figures "
             "follow; to compare, make an environment with `python3 -m venv "
             "ah && ah/bin/pip install torch==2.13.0 adapters` and pass "
             "--adapterhub_python=ah/bin/python." % skipped)
  else:
    progress("AdapterHub: %s" % versions)
  result = {"command": " ".join(["python", "scripts/lab/benchmark_vs_adapterhub.py"]
                                + argv),
            "machine": benchmark.machine(), "load_start": os.getloadavg(),
            "adapterhub_versions": versions, "adapterhub_skipped": skipped,
            "batch_size": flags.batch_size,
            "max_seq_length": flags.max_seq_length, "rounds": flags.rounds,
            "steps": {}, "epochs": {}}
  for name in benchmark._split(flags.configs):
    label, config = benchmark.load_config(name)
    n = flags.base_steps if config["hidden_size"] >= 768 else flags.steps
    args = {"config": config, "batch_size": flags.batch_size,
            "max_seq_length": flags.max_seq_length,
            "warmup_steps": flags.warmup_steps, "steps": n, "eval_steps": n}
    rows = []
    for r in range(flags.rounds):
      row = {}
      # Alternate which library goes first.
      order = ["ours", "adapterhub"] if r % 2 == 0 else ["adapterhub", "ours"]
      for side in order:
        if side == "adapterhub" and skipped:
          continue
        progress("%s steps, round %d/%d: %s" % (label, r + 1, flags.rounds,
                                                side))
        row[side] = (run_ours("steps", args) if side == "ours" else
                     run_adapterhub(flags.adapterhub_python, "steps", args))
      rows.append(row)
    result["steps"][label] = dict(summarize(rows), rounds=rows)
  for name in benchmark._split(flags.epoch_configs):
    label, config = benchmark.load_config(name)
    if not os.path.isfile(os.path.join(flags.glue_dir, "MRPC", "train.tsv")):
      progress("MRPC epoch skipped: no %s/MRPC/train.tsv" % flags.glue_dir)
      break
    args = {"config": config, "batch_size": flags.batch_size,
            "max_seq_length": flags.max_seq_length,
            "glue_dir": flags.glue_dir, "vocab_file": flags.vocab_file}
    progress("%s MRPC epoch: ours" % label)
    epoch = {"ours": run_ours("epoch", args)}
    if not skipped:
      progress("%s MRPC epoch: adapterhub" % label)
      epoch["adapterhub"] = run_adapterhub(flags.adapterhub_python, "epoch",
                                           args)
    result["epochs"][label] = epoch
  result["load_end"] = os.getloadavg()
  result["wall_s"] = time.time() - started
  text = markdown(result)
  os.makedirs(flags.output_dir, exist_ok=True)
  atomic_io.atomic_write_text(
      os.path.join(flags.output_dir, "benchmark_vs_adapterhub.json"),
      json.dumps(result, indent=2) + "\n")
  atomic_io.atomic_write_text(
      os.path.join(flags.output_dir, "benchmark_vs_adapterhub.md"), text)
  print(text)
  progress("done in %.0f s" % result["wall_s"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
