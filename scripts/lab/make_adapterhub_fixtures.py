"""Writes tests/data/adapterhub_tiny: AdapterHub's own adapters on a tiny BERT.

Runs in AdapterHub's own Python environment (torch, transformers, adapters
1.3.0), never in this project's (both import as `adapters`); start it from
outside this repository:

  cd /tmp && /path/to/ah-venv/bin/python /path/to/repo/scripts/lab/make_adapterhub_fixtures.py \
      /path/to/repo/tests/data/adapterhub_tiny [METHOD,...]

It writes the tiny base in Hugging Face layout (`hf/`: config.json,
model.safetensors, vocab.txt), `inputs.npz` (input_ids, input_mask,
segment_ids [4, 12]), and for each AdapterHub method name M: `M/` (its
save_adapter with the head; torch's .bin, and for those in SAFETENSORS_TOO
also safetensors in `M_safetensors/`) and `M_logits.npy`, AdapterHub's eval-mode
logits with M and its head active. Every trainable parameter gets seeded
noise (std 0.1) so that adapters and heads matter. With a list of methods,
only those are (re)written, beside the base and inputs already there.
"""

import json
import os
import sys

METHODS = ("seq_bn", "double_seq_bn", "par_bn", "scaled_parallel",
           "seq_bn_inv", "compacter", "compacter++", "lora", "ia3",
           "prefix_tuning", "prefix_tuning_flat", "prompt_tuning", "mam",
           "unipelt", "vera", "dora", "dvora", "adapter_plus", "loreft",
           "noreft", "direft", "mtl_lora")
SAFETENSORS_TOO = ("seq_bn", "vera", "dora", "dvora", "adapter_plus",
                   "loreft", "mtl_lora")
# Configs other than the method's default: DoRA with alpha / r = 4, where
# AdapterHub's norm (A·B unscaled) and its output (scaled) differ.
CONFIG_STRINGS = {"dora": "dora[alpha=16,r=4]",
                  "dvora": "dvora[alpha=16,r=4]",
                  "loreft": "loreft[suffix_positions=2,r=2]",
                  "noreft": "noreft[suffix_positions=2,r=2]",
                  "direft": "direft[suffix_positions=2,r=2]",
                  "mtl_lora": "mtl_lora[alpha=16,r=4,n_up_projection=2,"
                              "intermediate_lora=True]"}
# Two MTL-LoRA tasks sharing A and B, run under MultiTask (write_multitask).
MULTITASK = "mtl_multitask"


def main(out, only=None):
  import numpy as np
  import torch
  from adapters import BertAdapterModel
  from transformers import BertConfig
  torch.manual_seed(0)
  os.makedirs(out, exist_ok=True)
  if only:
    update(out, only)
    return
  config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=32,
                      max_position_embeddings=32, hidden_act="gelu")
  base = BertAdapterModel(config)
  hf = os.path.join(out, "hf")
  base.save_pretrained(hf, safe_serialization=True)
  for name in os.listdir(hf):
    if name not in ("config.json", "model.safetensors"):
      os.remove(os.path.join(hf, name))
  with open(os.path.join(hf, "vocab.txt"), "w") as f:
    f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                      + ["w%d" % i for i in range(35)]) + "\n")
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 40, (4, 12))
  lengths = [12, 7, 3, 10]
  mask = (np.arange(12)[None] < np.array(lengths)[:, None]).astype(np.int64)
  ids = ids * mask
  ids[:, 0] = 2
  segs = (np.arange(12)[None] >= np.array(lengths)[:, None] // 2) * mask
  np.savez(os.path.join(out, "inputs.npz"), input_ids=ids, input_mask=mask,
           segment_ids=segs)
  summary = {}
  write_methods(out, METHODS, ids, mask, segs, summary)
  write_fusion(out, ids, mask, segs, summary)
  write_multitask(out, ids, mask, segs, summary)
  write_summary(out, summary)


def update(out, methods):
  """Rewrites `methods` only, on the base and inputs in `out`."""
  import numpy as np
  inputs = np.load(os.path.join(out, "inputs.npz"))
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)["methods"]
  args = inputs["input_ids"], inputs["input_mask"], inputs["segment_ids"]
  write_methods(out, [m for m in methods if m != MULTITASK], *args,
                summary=summary)
  if MULTITASK in methods:
    write_multitask(out, *args, summary=summary)
  write_summary(out, summary)


def write_methods(out, methods, ids, mask, segs, summary):
  import numpy as np
  import torch
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import adapterhub_env  # pylint: disable=g-import-not-at-top
  adapterhub_env.provide_stochastic_depth()
  import adapters
  from adapters import BertAdapterModel
  hf = os.path.join(out, "hf")
  for method in methods:
    model = BertAdapterModel.from_pretrained(hf)
    name = method.replace("+", "p")
    config_arg = CONFIG_STRINGS.get(method, method)
    if method == "adapter_plus":  # A class, no name in AdapterHub's map;
      # bottleneck 4 on the tiny base, its LayerNorm before the adapter.
      config_arg = adapters.AdapterPlusConfig(reduction_factor=4,
                                              mh_adapter=True)
    if method.startswith("compacter"):  # Its PHM needs bottleneck % 4 == 0.
      config_arg = (adapters.CompacterPlusPlusConfig(reduction_factor=2)
                    if method.endswith("++") else
                    adapters.CompacterConfig(reduction_factor=2))
    model.add_adapter(name, config=config_arg)
    model.add_classification_head(name, num_labels=2)
    model.train_adapter(name)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
      for p in model.parameters():
        if p.requires_grad:
          p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    keep_orthogonal_signs(model)
    model.eval()
    model.set_active_adapters(name)
    model.save_adapter(os.path.join(out, name), name, with_head=True)
    if method in SAFETENSORS_TOO:
      model.save_adapter(os.path.join(out, name + "_safetensors"), name,
                         with_head=True, use_safetensors=True)
    print("computing", name, file=sys.stderr, flush=True)
    if method == "direft":
      # AdapterHub saves no subtract_projection: its DiReFT comes back as
      # NoReFT. The logits are those of the adapter as it loads.
      model = BertAdapterModel.from_pretrained(hf)
      model.load_adapter(os.path.join(out, name), set_active=True)
      model.eval()
    with torch.no_grad():
      logits = model(input_ids=torch.tensor(ids),
                     attention_mask=torch.tensor(mask),
                     token_type_ids=torch.tensor(segs)).logits.numpy()
    np.save(os.path.join(out, name + "_logits.npy"), logits)
    summary[name] = config_arg if isinstance(config_arg, str) else method


def keep_orthogonal_signs(model):
  """Puts the diagonal of each orthogonal parametrization's `original`
  (LoReFT's projection) back to its sign: torch never trains it, and
  truncates it to an integer (noise of -1 + 0.05 would zero a column)."""
  import torch
  with torch.no_grad():
    for n, p in model.named_parameters():
      if n.endswith("parametrizations.weight.original"):
        d = p.diagonal()
        d.copy_(torch.sign(d))


def write_fusion(out, ids, mask, segs, summary):
  """AdapterFusion (dynamic) of two seq_bn adapters, the head of the
  second."""
  import numpy as np
  import torch
  from adapters import BertAdapterModel
  from adapters.composition import Fuse
  hf = os.path.join(out, "hf")
  model = BertAdapterModel.from_pretrained(hf)
  for name in ("f1", "f2"):
    model.add_adapter(name, config="seq_bn")
  model.add_classification_head("f2", num_labels=2)
  model.add_adapter_fusion(Fuse("f1", "f2"), "dynamic")
  model.train_adapter_fusion(Fuse("f1", "f2"))
  generator = torch.Generator().manual_seed(2)
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "adapters." in n or "adapter_fusion" in n or "heads." in n:
        p.add_(torch.randn(p.shape, generator=generator) * 0.1)
  model.eval()
  model.set_active_adapters(Fuse("f1", "f2"))
  model.active_head = "f2"
  model.save_adapter(os.path.join(out, "f1"), "f1", with_head=False)
  model.save_adapter(os.path.join(out, "f2"), "f2", with_head=True)
  model.save_adapter_fusion(os.path.join(out, "fusion"), "f1,f2")
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids),
                   attention_mask=torch.tensor(mask),
                   token_type_ids=torch.tensor(segs)).logits.numpy()
  np.save(os.path.join(out, "fusion_logits.npy"), logits)
  summary["fusion"] = "Fuse(f1, f2), dynamic"


def write_multitask(out, ids, mask, segs, summary):
  """Two MTL-LoRA adapters t0, t1 with A and B shared
  (`share_parameters`), noised, saved (each with its copy of the shared
  tensors); the encoder's output under MultiTask(t0, t1), examples routed
  by task_ids 0, 1, 0, 1."""
  import numpy as np
  import torch
  from adapters import BertAdapterModel
  from adapters.composition import MultiTask
  hf = os.path.join(out, "hf")
  model = BertAdapterModel.from_pretrained(hf)
  tasks = MultiTask("t0", "t1")
  for name in tasks.children:
    model.add_adapter(name, config=CONFIG_STRINGS["mtl_lora"])
  model.share_parameters(tasks)
  model.train_adapter(tasks)
  generator = torch.Generator().manual_seed(4)
  with torch.no_grad():
    for p in model.parameters():  # Each shared tensor once.
      if p.requires_grad:
        p.add_(torch.randn(p.shape, generator=generator) * 0.1)
  model.eval()
  model.set_active_adapters(tasks)
  task_ids = np.arange(len(ids)) % 2
  os.makedirs(os.path.join(out, MULTITASK), exist_ok=True)
  for name in tasks.children:
    model.save_adapter(os.path.join(out, MULTITASK, name), name,
                       with_head=False)
  with torch.no_grad():
    hidden = model.bert(input_ids=torch.tensor(ids),
                        attention_mask=torch.tensor(mask),
                        token_type_ids=torch.tensor(segs),
                        task_ids=torch.tensor(task_ids))[0].numpy()
  np.save(os.path.join(out, MULTITASK, "hidden.npy"), hidden)
  np.save(os.path.join(out, MULTITASK, "task_ids.npy"), task_ids)
  summary[MULTITASK] = ("MultiTask(t0, t1), share_parameters, %s each"
                        % CONFIG_STRINGS["mtl_lora"])


def write_summary(out, summary):
  import torch
  import adapters
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump({"adapters": adapters.__version__, "torch": torch.__version__,
               "methods": summary}, f, indent=2, sort_keys=True)
  print(json.dumps(summary))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) > 2 else None)
