"""AdapterHub's side of the interop check: load an adapter directory with
AdapterHub itself and write its logits.

Runs in AdapterHub's own Python environment (torch, transformers,
adapters), never in this project's: both packages import as `adapters`, so
start it from a working directory outside this repository.

  python adapterhub_interop.py '{"hf_dir": ..., "adapter_dir": ...,
                                 "inputs": "inputs.npz", "out": "x.npy"}'

`inputs` holds int arrays input_ids, input_mask, segment_ids [batch, seq];
`out` receives AdapterHub's eval-mode logits [batch, labels] of the adapter
and its head on the Hugging Face BERT in `hf_dir`.
"""

import json
import sys


def main(args):
  import numpy as np
  import torch
  from adapters import AutoAdapterModel
  model = AutoAdapterModel.from_pretrained(args["hf_dir"])
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
