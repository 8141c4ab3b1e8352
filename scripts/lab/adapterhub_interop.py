"""AdapterHub's side of the interop check: load an adapter directory with
AdapterHub itself and write its logits.

Runs in AdapterHub's own Python environment (torch, transformers,
adapters), never in this project's: both packages import as `adapters`, so
start it from a working directory outside this repository.

  python adapterhub_interop.py '{"hf_dir": ..., "adapter_dir": ...,
                                 "inputs": "inputs.npz", "out": "x.npy"}'

`inputs` holds int arrays input_ids, input_mask, segment_ids [batch, seq];
`out` receives AdapterHub's eval-mode logits [batch, labels] of the adapter
and its head on the Hugging Face BERT in `hf_dir`. With "fusion_dir",
"adapter_dirs" and "head" instead of "adapter_dir": the adapters, their
AdapterFusion active, and that head.

With "make": an AdapterHub config name, or {"class": the name of one of
its config classes, and that class's fields} (and "save_dir", "seed"), it first
adds that adapter and a classification head to the base, puts seeded noise
(std 0.1) on every parameter AdapterHub trains, and saves both with
`save_adapter` to save_dir/bin (torch's .bin) and save_dir/safetensors;
the logits are then those of that adapter.
"""

import json
import sys


def main(args):
  import os
  import numpy as np
  import torch
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import adapterhub_env
  adapterhub_env.provide_stochastic_depth()
  from adapters import AutoAdapterModel
  model = AutoAdapterModel.from_pretrained(args["hf_dir"])
  if "make" in args:
    name = make_adapter(model, args)
  elif "fusion_dir" in args:  # Adapters, then their fusion, then the head.
    from adapters.composition import Fuse
    names = [model.load_adapter(d) for d in args["adapter_dirs"]]
    name = model.load_adapter_fusion(args["fusion_dir"])
    model.set_active_adapters(Fuse(*names))
    model.active_head = args["head"]
  else:
    name = model.load_adapter(args["adapter_dir"], set_active=True)
  model.eval()
  inputs = np.load(args["inputs"])
  with torch.no_grad():
    out = model(input_ids=torch.tensor(inputs["input_ids"], dtype=torch.long),
                attention_mask=torch.tensor(inputs["input_mask"],
                                            dtype=torch.long),
                token_type_ids=torch.tensor(inputs["segment_ids"],
                                            dtype=torch.long))
  np.save(args["out"], out.logits.numpy())
  print(json.dumps({"name": name, "shape": list(out.logits.shape)}))


def make_adapter(model, args):
  """Adds, noises and saves an AdapterHub adapter (see the module doc)."""
  import os
  import torch
  import adapters
  name = "made"
  config = args["make"]
  if isinstance(config, dict):  # {"class": an AdapterHub config class, ...}
    fields = dict(config)
    config = getattr(adapters, fields.pop("class"))(**fields)
  model.add_adapter(name, config=config)
  model.add_classification_head(name, num_labels=2)
  model.train_adapter(name)
  generator = torch.Generator().manual_seed(int(args.get("seed", 0)))
  with torch.no_grad():
    for p in model.parameters():
      if p.requires_grad:
        p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    # LoReFT's orthogonal map truncates original's diagonal (never trained
    # there) to an integer: keep it +-1 (adapters/reft.py).
    for n, p in model.named_parameters():
      if n.endswith("parametrizations.weight.original"):
        p.diagonal().copy_(torch.sign(p.diagonal()))
  model.set_active_adapters(name)
  for form in ("bin", "safetensors"):
    os.makedirs(os.path.join(args["save_dir"], form), exist_ok=True)
    model.save_adapter(os.path.join(args["save_dir"], form), name,
                       with_head=True, use_safetensors=form == "safetensors")
  return name


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
