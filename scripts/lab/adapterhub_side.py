"""The AdapterHub (PyTorch) side of scripts/lab/benchmark_vs_adapterhub.py.

Runs in AdapterHub's own Python environment (torch, transformers, adapters),
never in this project's: both packages are imported as `adapters`. The
parent script starts it from a temporary working directory so that this
project's `adapters` package is not on the path.

  python scripts/lab/adapterhub_side.py '<json args>'

prints one JSON line with its figures. The model is a BERT of the given
configuration (random weights: speed does not depend on them) with
AdapterHub's double bottleneck ("houlsby", `DoubleSeqBnConfig`) set to the
reference recipe: bottleneck 64 (reduction factor hidden/64), tanh GELU
(`gelu_new`), after the attention output and the feed-forward output; its
classification head; `train_adapter`; AdamW (learning rate 3e-4, weight
decay 0.01), linear warm-up and decay, gradients clipped to norm 1.0.
"""

import json
import os
import resource
import statistics
import sys
import time


def progress(message):
  print("[adapterhub] " + message, file=sys.stderr, flush=True)


def peak_rss_bytes():
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def random_batch(config, batch_size, seq_length, seed=0):
  """The same batch as the TensorFlow side's (numpy's generator, seed 0)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  input_ids = rng.integers(1, config["vocab_size"], (batch_size, seq_length))
  segment_ids = (np.arange(seq_length)[None, :] >= seq_length // 2).repeat(
      batch_size, 0)
  labels = rng.integers(0, 2, batch_size)
  return input_ids, segment_ids, labels


def build(config, num_train_steps):
  """(model, optimizer, scheduler, trainable parameters) of the recipe."""
  import torch
  import transformers
  import adapters
  hf_config = transformers.BertConfig(
      vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
      num_hidden_layers=config["num_hidden_layers"],
      num_attention_heads=config["num_attention_heads"],
      intermediate_size=config["intermediate_size"], hidden_act="gelu_new",
      hidden_dropout_prob=config["hidden_dropout_prob"],
      attention_probs_dropout_prob=config["attention_probs_dropout_prob"],
      max_position_embeddings=config["max_position_embeddings"],
      type_vocab_size=config["type_vocab_size"],
      initializer_range=config["initializer_range"], layer_norm_eps=1e-12)
  torch.manual_seed(0)
  model = adapters.BertAdapterModel(hf_config)
  model.add_adapter("t", config=adapters.DoubleSeqBnConfig(
      reduction_factor=config["hidden_size"] / 64, non_linearity="gelu_new"))
  model.add_classification_head("t", num_labels=2)
  model.train_adapter("t")
  params = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.01)
  scheduler = transformers.get_linear_schedule_with_warmup(
      optimizer, max(1, num_train_steps // 10), max(1, num_train_steps))
  return model, optimizer, scheduler, params


def make_step(model, optimizer, scheduler, params):
  import torch

  def train_step(input_ids, attention_mask, token_type_ids, labels):
    model.train()
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                token_type_ids=token_type_ids, labels=labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(out.loss)

  return train_step


def steps(args):
  """Train-step and eval-step times on one fixed random batch."""
  import torch
  config, batch, seq = args["config"], args["batch_size"], args["max_seq_length"]
  input_ids, segment_ids, labels = random_batch(config, batch, seq)
  input_ids = torch.tensor(input_ids)
  token_type_ids = torch.tensor(segment_ids.astype("int64"))
  attention_mask = torch.ones_like(input_ids)
  labels = torch.tensor(labels)
  model, optimizer, scheduler, params = build(config, 1000)
  train_step = make_step(model, optimizer, scheduler, params)
  times = []
  for i in range(args["warmup_steps"] + args["steps"]):
    start = time.perf_counter()
    train_step(input_ids, attention_mask, token_type_ids, labels)
    if i >= args["warmup_steps"]:
      times.append(time.perf_counter() - start)
    progress("train step %d %.2f s" % (i + 1, time.perf_counter() - start))
  result = {"train_step_s": statistics.median(times), "train_times_s": times,
            "train_peak_rss_bytes": peak_rss_bytes()}
  model.eval()
  eval_times = []
  with torch.inference_mode():
    for i in range(args["warmup_steps"] + args["eval_steps"]):
      start = time.perf_counter()
      model(input_ids=input_ids, attention_mask=attention_mask,
            token_type_ids=token_type_ids).logits.numpy()
      if i >= args["warmup_steps"]:
        eval_times.append(time.perf_counter() - start)
  result.update(eval_step_s=statistics.median(eval_times),
                eval_times_s=eval_times)
  return result


def read_mrpc(path):
  """(text_a, text_b, label) of an MRPC train.tsv."""
  rows = []
  with open(path, encoding="utf-8-sig") as f:
    for i, line in enumerate(f):
      if i == 0:
        continue
      cols = line.rstrip("\n").split("\t")
      rows.append((cols[3], cols[4], int(cols[0])))
  return rows


def length_grouped_batches(lengths, batch_size, window_batches, seed):
  """Shuffled batches of similar length (what HF Trainer's group_by_length
  does): windows of `window_batches` batches sorted by length, then cut;
  the batches in a random order. Full batches only."""
  import numpy as np
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(lengths))
  batches = []
  window = batch_size * window_batches
  for start in range(0, len(order) - batch_size + 1, window):
    chunk = order[start:start + window]
    chunk = chunk[: len(chunk) // batch_size * batch_size]
    chunk = sorted(chunk, key=lambda i: lengths[i])
    batches += [chunk[i:i + batch_size]
                for i in range(0, len(chunk), batch_size)]
  rng.shuffle(batches)
  return batches


def epoch(args):
  """One MRPC training epoch: tokenization, then every step, padded to the
  longest example of each length-grouped batch (dynamic padding)."""
  import torch
  import transformers
  config, batch, seq = args["config"], args["batch_size"], args["max_seq_length"]
  start = time.perf_counter()
  tokenizer = transformers.BertTokenizerFast(vocab_file=args["vocab_file"],
                                             do_lower_case=True)
  rows = read_mrpc(os.path.join(args["glue_dir"], "MRPC", "train.tsv"))
  encoded = tokenizer([r[0] for r in rows], [r[1] for r in rows],
                      truncation=True, max_length=seq)
  labels = [r[2] for r in rows]
  tokenize_s = time.perf_counter() - start
  lengths = [len(ids) for ids in encoded["input_ids"]]
  batches = length_grouped_batches(lengths, batch, 32, seed=0)
  start = time.perf_counter()
  model, optimizer, scheduler, params = build(config, len(batches))
  build_s = time.perf_counter() - start
  train_step = make_step(model, optimizer, scheduler, params)
  start = time.perf_counter()
  widths = []
  for n, indices in enumerate(batches):
    width = max(lengths[i] for i in indices)
    widths.append(width)
    ids = torch.zeros((len(indices), width), dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, i in enumerate(indices):
      k = lengths[i]
      ids[row, :k] = torch.tensor(encoded["input_ids"][i])
      types[row, :k] = torch.tensor(encoded["token_type_ids"][i])
      mask[row, :k] = 1
    train_step(ids, mask, types, torch.tensor([labels[i] for i in indices]))
    if (n + 1) % 20 == 0:
      progress("epoch: %d/%d steps %.1f s" % (n + 1, len(batches),
                                              time.perf_counter() - start))
  epoch_s = time.perf_counter() - start
  return {"epoch_s": epoch_s, "epoch_steps": len(batches),
          "startup_s": tokenize_s + build_s, "tokenize_s": tokenize_s,
          "build_s": build_s, "mean_width": sum(widths) / len(widths),
          "peak_rss_bytes": peak_rss_bytes()}


def versions():
  import adapters
  import torch
  import transformers
  return {"torch": torch.__version__, "adapters": adapters.__version__,
          "transformers": transformers.__version__,
          "threads": torch.get_num_threads()}


def main():
  args = json.loads(sys.argv[1])
  what = args.pop("what")
  result = {"steps": steps, "epoch": epoch,
            "versions": lambda _: versions()}[what](args)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
