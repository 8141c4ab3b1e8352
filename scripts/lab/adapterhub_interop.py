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
"""

import json
import sys


def main(args):
  import numpy as np
  import torch
  from adapters import AutoAdapterModel
  model = AutoAdapterModel.from_pretrained(args["hf_dir"])
  if "fusion_dir" in args:  # Adapters, then their fusion, then the head.
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


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
