"""The AdapterHub (PyTorch) side of scripts/lab/side_by_side.py: trains one
AdapterHub method on one task (MRPC, RTE or CoNLL-2003 NER) and predicts the
dev set.

Runs in AdapterHub's own Python environment (torch, transformers, adapters),
never in this project's: both packages are imported as `adapters`. Start it
from a temporary working directory, not the repository (this script also
drops the repository root and '' from sys.path before `import adapters`):

  cd /tmp && python /path/to/scripts/lab/adapterhub_train.py '<json args>'

It prints one JSON line on stdout (versions, the arguments, the trainable
parameter count, every step's loss, the training time, the dev predictions;
GLUE scores too: side_by_side.py scores CoNLL with this toolkit's conlleval);
progress goes to stderr.

Arguments (JSON keys): task ("MRPC", "RTE" or "CoNLL"), data_dir (the task's
folder: GLUE train.tsv/dev.tsv, or CoNLL train.txt/valid.txt), model_dir (a
Hugging Face BERT with vocab.txt), adapter_config (an AdapterHub config
string such as "seq_bn", "par_bn", "prefix_tuning", "lora", or a dict for
`adapters.AdapterConfig.load`), learning_rate, num_train_epochs,
train_batch_size, eval_batch_size (64), max_seq_length, seed,
warmup_proportion (0.1), weight_decay (0.01), max_grad_norm (1.0),
head_layers (1), use_pooler (true; classification only), hidden_act (unset:
the model config's own), and for smoke tests max_steps, max_train_examples
and max_eval_examples (the first examples of each file; for CoNLL,
sentences).

The recipe mirrors the TensorFlow side (Google BERT's run_classifier
conventions):
- Tokenization: `BertTokenizerFast` from the model's vocab.txt, lower case;
  pairs truncated "longest_first" to max_seq_length.
- Model: `AutoAdapterModel`; `add_adapter("t", config)`; a classification
  head (2 labels, `head_layers`, `use_pooler`) or a tagging head;
  `train_adapter("t")` (the base is frozen; the adapter and the head train);
  `transformers.set_seed(seed)` before building the adapter and head, and
  again before training.
- Steps: int(num_train_examples / train_batch_size * num_train_epochs). The
  examples are a stream: each epoch a fresh permutation (numpy
  `default_rng(seed)`), the epochs concatenated and cut into consecutive
  batches, so a batch may span two epochs. Each batch is padded to its
  longest example. max_steps stops training early; the schedule still spans
  the full number of steps.
- Optimizer: AdamW (betas 0.9/0.999, eps 1e-8) over the trainable
  parameters, in the Hugging Face Trainer's two groups: weight decay for all
  but biases and LayerNorm parameters, none for those; linear warm-up over
  int(steps * warmup_proportion) steps, then linear decay to 0; gradients
  clipped to max_grad_norm each step.
- CoNLL: one example per sentence; a word's label sits on its first word
  piece (other pieces and [CLS]/[SEP] are ignored by the loss); sentences
  longer than max_seq_length - 2 pieces are truncated, and dev words beyond
  the window are predicted "O" (counted in `dev_words_cut`). The labels are
  train.txt's tags plus B- and I- of every entity type seen; the IOB1 tags
  are trained and predicted as they are.
"""

import json
import os
import sys
import time

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _hide_repository():
  """Drops the repository root (and the working directory, '') from sys.path,
  so that `import adapters` finds AdapterHub, not this project's package."""
  def is_repo(entry):
    if entry in ("", "."):
      return True
    return os.path.abspath(entry) == _REPO_ROOT
  sys.path[:] = [entry for entry in sys.path if not is_repo(entry)]


_hide_repository()
os.environ.setdefault("USE_TF", "0")  # transformers: do not import TensorFlow.

DEFAULTS = {
    "eval_batch_size": 64,
    "warmup_proportion": 0.1,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "head_layers": 1,
    "use_pooler": True,
    "hidden_act": None,
    "max_steps": None,
    "max_train_examples": None,
    "max_eval_examples": None,
}
REQUIRED = ("task", "data_dir", "model_dir", "adapter_config", "learning_rate",
            "num_train_epochs", "train_batch_size", "max_seq_length", "seed")
GLUE_LABELS = {"MRPC": ("0", "1"), "RTE": ("entailment", "not_entailment")}


def progress(message):
  print("[adapterhub] " + message, file=sys.stderr, flush=True)


def read_glue(task, path):
  """(text_a, text_b, label id) of a GLUE MRPC or RTE tsv file.

  Args:
    task: "MRPC" or "RTE".
    path: the train.tsv or dev.tsv file (a header line, then one example a
      line, tab-separated, no quoting).

  Returns:
    A list of (str, str, int), in file order.
  """
  labels = GLUE_LABELS[task]
  rows = []
  with open(path, encoding="utf-8-sig") as f:
    for number, line in enumerate(f):
      if number == 0 or not line.strip():
        continue
      cols = line.rstrip("\n").split("\t")
      if task == "MRPC":
        rows.append((cols[3], cols[4], labels.index(cols[0])))
      else:
        rows.append((cols[1], cols[2], labels.index(cols[3])))
  return rows


def read_conll(path):
  """(words, tags) of each sentence of a CoNLL-2003 file.

  Args:
    path: the file: one token a line, the tag in the last column, blank lines
      between sentences, `-DOCSTART-` lines between documents.

  Returns:
    A list of (list of str, list of str), in file order.
  """
  sentences, words, tags = [], [], []
  with open(path, encoding="utf-8") as f:
    for line in f:
      parts = line.split()
      if not parts or parts[0] == "-DOCSTART-":
        if words:
          sentences.append((words, tags))
        words, tags = [], []
        continue
      words.append(parts[0])
      tags.append(parts[-1])
  if words:
    sentences.append((words, tags))
  return sentences


def conll_labels(sentences):
  """The sorted tags of `sentences`, closed over entity types (every type
  seen gets both its B- and I- tag)."""
  tags = {tag for _, sentence_tags in sentences for tag in sentence_tags}
  for tag in list(tags):
    if tag != "O":
      tags.update(("B-" + tag[2:], "I-" + tag[2:]))
  return sorted(tags)


def encode_glue(tokenizer, rows, max_seq_length):
  """Features of (text_a, text_b, label) rows: a list of dicts with
  input_ids, token_type_ids and label."""
  encoded = tokenizer([r[0] for r in rows], [r[1] for r in rows],
                      truncation="longest_first", max_length=max_seq_length)
  return [{"input_ids": ids, "token_type_ids": types, "label": row[2]}
          for ids, types, row in zip(encoded["input_ids"],
                                     encoded["token_type_ids"], rows)]


def encode_conll(tokenizer, sentences, label_ids, max_seq_length):
  """Features of CoNLL sentences, one per sentence.

  Args:
    tokenizer: a BertTokenizerFast.
    sentences: (words, tags) pairs.
    label_ids: dict tag -> label id.
    max_seq_length: the window, [CLS] and [SEP] included.

  Returns:
    (features, truncated): features are dicts with input_ids,
    token_type_ids, labels (-100 except on each kept word's first piece),
    first_pieces (each word's first piece position in input_ids, None where
    the word lies beyond the window or has no pieces); truncated is how many
    sentences lost pieces.
  """
  window = max_seq_length - 2
  encoded = tokenizer([words for words, _ in sentences],
                      is_split_into_words=True, add_special_tokens=False)
  features, truncated = [], 0
  for n, (words, tags) in enumerate(sentences):
    pieces = encoded["input_ids"][n]
    word_ids = encoded.word_ids(n)
    if len(pieces) > window:
      truncated += 1
    pieces, word_ids = pieces[:window], word_ids[:window]
    input_ids = [tokenizer.cls_token_id] + pieces + [tokenizer.sep_token_id]
    labels = [-100] * len(input_ids)
    first_pieces = [None] * len(words)
    previous = None
    for position, word in enumerate(word_ids, start=1):
      if word is not None and word != previous:
        first_pieces[word] = position
        labels[position] = label_ids[tags[word]]
      previous = word
    features.append({"input_ids": input_ids,
                     "token_type_ids": [0] * len(input_ids),
                     "labels": labels, "first_pieces": first_pieces})
  return features, truncated


def pad_batch(features, with_labels=True):
  """Tensors of a batch, padded to its longest example: input_ids,
  token_type_ids, attention_mask and (with_labels) labels."""
  import torch
  width = max(len(f["input_ids"]) for f in features)
  ids = torch.zeros((len(features), width), dtype=torch.long)
  types = torch.zeros_like(ids)
  mask = torch.zeros_like(ids)
  token_labels = torch.full_like(ids, -100)
  for row, f in enumerate(features):
    k = len(f["input_ids"])
    ids[row, :k] = torch.tensor(f["input_ids"])
    types[row, :k] = torch.tensor(f["token_type_ids"])
    mask[row, :k] = 1
    if "labels" in f:
      token_labels[row, :k] = torch.tensor(f["labels"])
  batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
  if with_labels:
    if "label" in features[0]:
      batch["labels"] = torch.tensor([f["label"] for f in features])
    else:
      batch["labels"] = token_labels
  return batch


def token_logits(logits, width, combine):
  """The logits of the input's own positions: prompt tuning adds its prompt
  tokens to the sequence (`combine`: "prefix", before it, or
  "prefix_after_bos", after [CLS])."""
  import torch
  extra = logits.shape[1] - width
  if extra <= 0:
    return logits
  if combine == "prefix_after_bos":
    return torch.cat([logits[:, :1], logits[:, 1 + extra:]], dim=1)
  return logits[:, extra:]


def train_order(num_examples, batch_size, num_steps, seed):
  """The batches (lists of example indices) of the example stream: each
  epoch a fresh permutation, the epochs concatenated and cut in order."""
  import numpy as np
  rng = np.random.default_rng(seed)
  order = []
  while len(order) < num_steps * batch_size:
    order.extend(int(i) for i in rng.permutation(num_examples))
  return [order[step * batch_size:(step + 1) * batch_size]
          for step in range(num_steps)]


def optimizer_groups(model, weight_decay):
  """The Hugging Face Trainer's parameter groups over the trainable
  parameters: weight decay except on biases and LayerNorm parameters."""
  import torch
  layer_norm = set()
  for module in model.modules():
    if isinstance(module, torch.nn.LayerNorm):
      layer_norm.update(id(p) for p in module.parameters(recurse=False))
  decay, no_decay = [], []
  for name, parameter in model.named_parameters():
    if not parameter.requires_grad:
      continue
    if ("bias" in name or "LayerNorm" in name or "layer_norm" in name
        or id(parameter) in layer_norm):
      no_decay.append(parameter)
    else:
      decay.append(parameter)
  return [{"params": decay, "weight_decay": weight_decay},
          {"params": no_decay, "weight_decay": 0.0}]


def build_model(args, num_labels, tagging):
  """The model with its adapter "t" and head "t", set up for training.

  Returns:
    (model, loading info of the base weights).
  """
  import transformers
  import adapters
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import adapterhub_env  # pylint: disable=g-import-not-at-top
  adapterhub_env.provide_stochastic_depth()
  config = transformers.AutoConfig.from_pretrained(args["model_dir"])
  if args["hidden_act"]:
    config.hidden_act = args["hidden_act"]
  model, info = adapters.AutoAdapterModel.from_pretrained(
      args["model_dir"], config=config, output_loading_info=True)
  adapter_config = args["adapter_config"]
  if isinstance(adapter_config, dict):
    adapter_config = adapters.AdapterConfig.load(adapter_config)
  transformers.set_seed(args["seed"])
  model.add_adapter("t", config=adapter_config)
  if tagging:
    model.add_tagging_head("t", num_labels=num_labels,
                           layers=args["head_layers"])
  else:
    model.add_classification_head("t", num_labels=num_labels,
                                  layers=args["head_layers"],
                                  use_pooler=args["use_pooler"])
  model.train_adapter("t")
  model.set_active_adapters("t")
  return model, info


def train(model, features, args, num_train_steps):
  """Trains on the example stream; returns (losses, steps run, seconds)."""
  import torch
  import transformers
  batches = train_order(len(features), args["train_batch_size"],
                        num_train_steps, args["seed"])
  if args["max_steps"] is not None:
    batches = batches[:args["max_steps"]]
  groups = optimizer_groups(model, args["weight_decay"])
  params = [p for group in groups for p in group["params"]]
  optimizer = torch.optim.AdamW(groups, lr=args["learning_rate"],
                                betas=(0.9, 0.999), eps=1e-8)
  scheduler = transformers.get_linear_schedule_with_warmup(
      optimizer, int(num_train_steps * args["warmup_proportion"]),
      num_train_steps)
  transformers.set_seed(args["seed"])
  model.train()
  losses = []
  start = time.perf_counter()
  for step, indices in enumerate(batches, start=1):
    batch = pad_batch([features[i] for i in indices])
    out = model(**batch)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(params, args["max_grad_norm"])
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    losses.append([step, out.loss.item()])
    if step % 50 == 0 or step == len(batches):
      recent = [loss for _, loss in losses[-50:]]
      progress("step %d/%d loss %.4f (mean of last %d) %.1f s" % (
          step, len(batches), sum(recent) / len(recent), len(recent),
          time.perf_counter() - start))
  return losses, len(batches), time.perf_counter() - start


def predict(model, features, batch_size):
  """(logits per example, summed loss, loss count) over `features`, in
  order; logits of tagging examples cover the input's own positions."""
  import torch
  import torch.nn.functional as F
  import adapters
  prompt = model.adapters_config.match("t", adapters.PromptTuningConfig)
  combine = prompt["combine"] if prompt is not None else None
  model.eval()
  outputs, loss_sum, loss_count = [], 0.0, 0
  with torch.inference_mode():
    for first in range(0, len(features), batch_size):
      chunk = features[first:first + batch_size]
      batch = pad_batch(chunk)
      labels = batch.pop("labels")
      logits = model(**batch).logits.float()
      if labels.dim() == 2:
        logits = token_logits(logits, labels.shape[1], combine)
        loss_sum += float(F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
            ignore_index=-100, reduction="sum"))
        loss_count += int((labels != -100).sum())
        for row, f in enumerate(chunk):
          outputs.append(logits[row, :len(f["input_ids"])])
      else:
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        loss_count += len(chunk)
        outputs.extend(logits)
  return outputs, loss_sum, loss_count


def run(args):
  """Trains and evaluates; returns the result dict."""
  import torch
  import transformers
  import adapters
  if os.path.abspath(os.path.dirname(adapters.__file__)).startswith(
      _REPO_ROOT + os.sep) and "site-packages" not in adapters.__file__:
    raise SystemExit("imported this project's adapters (%s), not AdapterHub's:"
                     " run from a directory outside the repository"
                     % adapters.__file__)
  threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
  torch.set_num_threads(threads)
  task = args["task"]
  tagging = task == "CoNLL"
  tokenizer = transformers.BertTokenizerFast(
      vocab_file=os.path.join(args["model_dir"], "vocab.txt"),
      do_lower_case=True)
  result = {"versions": {"torch": torch.__version__,
                         "transformers": transformers.__version__,
                         "adapters": adapters.__version__,
                         "threads": torch.get_num_threads(),
                         "python": sys.version.split()[0]},
            "args": args}
  start = time.perf_counter()
  if tagging:
    train_sentences = read_conll(os.path.join(args["data_dir"], "train.txt"))
    dev_sentences = read_conll(os.path.join(args["data_dir"], "valid.txt"))
    labels = conll_labels(train_sentences)
    label_ids = {label: i for i, label in enumerate(labels)}
    unknown = sorted({t for _, tags in dev_sentences for t in tags}
                     - set(labels))
    if unknown:
      raise SystemExit("dev tags missing from train.txt: %s" % unknown)
    if args["max_train_examples"]:
      train_sentences = train_sentences[:args["max_train_examples"]]
    if args["max_eval_examples"]:
      dev_sentences = dev_sentences[:args["max_eval_examples"]]
    train_features, train_truncated = encode_conll(
        tokenizer, train_sentences, label_ids, args["max_seq_length"])
    dev_features, dev_truncated = encode_conll(
        tokenizer, dev_sentences, label_ids, args["max_seq_length"])
    result.update(labels=labels, train_sentences_truncated=train_truncated,
                  dev_sentences_truncated=dev_truncated)
    num_labels = len(labels)
  else:
    train_rows = read_glue(task, os.path.join(args["data_dir"], "train.tsv"))
    dev_rows = read_glue(task, os.path.join(args["data_dir"], "dev.tsv"))
    if args["max_train_examples"]:
      train_rows = train_rows[:args["max_train_examples"]]
    if args["max_eval_examples"]:
      dev_rows = dev_rows[:args["max_eval_examples"]]
    train_features = encode_glue(tokenizer, train_rows, args["max_seq_length"])
    dev_features = encode_glue(tokenizer, dev_rows, args["max_seq_length"])
    num_labels = 2
  result["tokenize_seconds"] = time.perf_counter() - start
  num_train_steps = int(len(train_features) / args["train_batch_size"]
                        * args["num_train_epochs"])
  model, info = build_model(args, num_labels, tagging)
  trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
  head = sum(p.numel() for n, p in model.named_parameters()
             if p.requires_grad and n.startswith("heads."))
  result.update(
      base_missing_keys=list(info["missing_keys"]),
      adapter_config_resolved=dict(model.adapters_config.get("t").to_dict()),
      hidden_act=model.config.hidden_act,
      trainable_parameters=trainable, trainable_head_parameters=head,
      trainable_adapter_parameters=trainable - head,
      num_train_examples=len(train_features),
      num_eval_examples=len(dev_features), num_train_steps=num_train_steps)
  progress("%s %s: %d train examples, %d steps, %d trainable parameters" % (
      task, args["adapter_config"], len(train_features), num_train_steps,
      trainable))
  losses, steps_run, seconds = train(model, train_features, args,
                                     num_train_steps)
  result.update(steps_run=steps_run, losses=losses, train_seconds=seconds,
                examples_per_second=(steps_run * args["train_batch_size"]
                                     / seconds if seconds else None))
  start = time.perf_counter()
  logits, loss_sum, loss_count = predict(
      model, dev_features, args["eval_batch_size"])
  result["eval_seconds"] = time.perf_counter() - start
  result["eval_loss"] = loss_sum / loss_count if loss_count else None
  if tagging:
    predictions, gold, cut = [], [], 0
    for (words, tags), f, example_logits in zip(dev_sentences, dev_features,
                                                logits):
      best = example_logits.argmax(-1).tolist()
      predicted = []
      for position in f["first_pieces"]:
        if position is None:
          predicted.append("O")
          cut += 1
        else:
          predicted.append(labels[best[position]])
      predictions.append(predicted)
      gold.append(list(tags))
    # Scored by side_by_side.py with this toolkit's conlleval.
    result.update(dev_predictions=predictions, dev_gold=gold,
                  dev_words_cut=cut)
  else:
    predictions = [int(row.argmax()) for row in logits]
    gold = [f["label"] for f in dev_features]
    correct = sum(p == g for p, g in zip(predictions, gold))
    result.update(dev_predictions=predictions, dev_labels=gold,
                  eval_accuracy=correct / len(gold))
    if task == "MRPC":
      tp = sum(p == 1 and g == 1 for p, g in zip(predictions, gold))
      predicted_1, gold_1 = predictions.count(1), gold.count(1)
      precision = tp / predicted_1 if predicted_1 else 0.0
      recall = tp / gold_1 if gold_1 else 0.0
      result["eval_f1"] = (2 * precision * recall / (precision + recall)
                           if precision + recall else 0.0)
  return result


def main():
  if len(sys.argv) != 2:
    raise SystemExit("usage: adapterhub_train.py '<json args>'")
  given = json.loads(sys.argv[1])
  missing = [key for key in REQUIRED if key not in given]
  if missing:
    raise SystemExit("missing arguments: %s" % ", ".join(missing))
  unknown = sorted(set(given) - set(REQUIRED) - set(DEFAULTS))
  if unknown:
    raise SystemExit("unknown arguments: %s" % ", ".join(unknown))
  if given["task"] not in ("MRPC", "RTE", "CoNLL"):
    raise SystemExit("task must be MRPC, RTE or CoNLL, not %r" % given["task"])
  args = dict(DEFAULTS, **given)
  print(json.dumps(run(args), default=str), flush=True)


if __name__ == "__main__":
  main()
