"""Training steps here and in AdapterHub 1.3 agree.

From the same weights (AdapterHub's freshly initialised adapter and head,
loaded here from its `save_adapter` directory), on the same batch, with
dropout set to 0 on both sides, `--optimizer=adamw` (compile with
`create_optimizer(..., optimizer="adamw")`) and AdapterHub's training (its
`train_adapter`, torch's AdamW in the Hugging Face Trainer's two decay
groups, `get_linear_schedule_with_warmup`, clipping to norm 1.0) give the
same losses step by step and the same trained weights. What is left between
the two toolkits' runs is then the random initialisation, the dropout masks
and the order and shape of the batches.
"""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from adapter_bert.compute import optimization
from adapter_bert.model import modeling
import tiny_fixtures as fx

TINY = os.path.join(fx.REPO_ROOT, "tests", "data", "adapterhub_tiny")
HAVE_ADAPTERHUB = (importlib.util.find_spec("adapters") is not None
                   and importlib.util.find_spec("torch") is not None)
pytestmark = pytest.mark.skipif(
    not HAVE_ADAPTERHUB, reason="AdapterHub is not installed (pip install "
    "torch adapters; .ci/run installs both)")

STEPS = 4
LEARNING_RATE = 3e-2  # Large, so that four steps move every weight.
WEIGHT_DECAY = 0.05


def _base_without_dropout(tmp_path):
  """The tiny Hugging Face BERT with both dropout rates 0."""
  hf_dir = str(tmp_path / "hf")
  shutil.copytree(os.path.join(TINY, "hf"), hf_dir)
  with open(os.path.join(hf_dir, "config.json")) as f:
    config = json.load(f)
  config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  with open(os.path.join(hf_dir, "config.json"), "w") as f:
    json.dump(config, f)
  return hf_dir


def _adapterhub_trains(method, hf_dir, inputs, labels, tmp_path):
  """AdapterHub's steps; returns (start dir, end dir, losses, #trained)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  import adapters  # pylint: disable=g-import-not-at-top  (AdapterHub's)
  torch.manual_seed(0)
  model = adapters.AutoAdapterModel.from_pretrained(hf_dir)
  model.add_adapter("t", config=method)
  model.add_classification_head("t", num_labels=2, layers=1,
                                use_pooler=True)
  model.train_adapter("t")
  model.train()
  start = str(tmp_path / "start")
  model.save_adapter(start, "t", with_head=True)
  norm_params = {id(p) for m in model.modules()
                 if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
  trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  decay = [p for n, p in trained
           if "bias" not in n and id(p) not in norm_params]
  no_decay = [p for n, p in trained
              if "bias" in n or id(p) in norm_params]
  optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": WEIGHT_DECAY},
       {"params": no_decay, "weight_decay": 0.0}],
      lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8)
  schedule = transformers.get_linear_schedule_with_warmup(optimizer, 1,
                                                          STEPS)
  batch = dict(
      input_ids=torch.tensor(inputs["input_ids"], dtype=torch.long),
      attention_mask=torch.tensor(inputs["input_mask"], dtype=torch.long),
      token_type_ids=torch.tensor(inputs["segment_ids"], dtype=torch.long),
      labels=torch.tensor(labels, dtype=torch.long))
  losses = []
  for _ in range(STEPS):
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for _, p in trained], 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()
    losses.append(float(loss.detach()))
  end = str(tmp_path / "end")
  model.save_adapter(end, "t", with_head=True)
  return start, end, losses, sum(p.numel() for _, p in trained)


@pytest.mark.parametrize("method", ["par_bn", "seq_bn", "lora",
                                    "prefix_tuning"])
def test_adamw_steps_match_adapterhubs(method, tmp_path):
  hf_dir = _base_without_dropout(tmp_path)
  data = np.load(os.path.join(TINY, "inputs.npz"))
  inputs = {k: data[k].astype(np.int32) for k in data.files}
  labels = (np.arange(len(inputs["input_ids"])) % 2).astype(np.int32)
  start, end, want_losses, want_count = _adapterhub_trains(
      method, hf_dir, inputs, labels, tmp_path)

  # The head's dropout is a constant (the reference's 0.1) here; AdapterHub
  # takes the config's hidden_dropout_prob.
  model = modeling.BertAdapterModel.from_pretrained(hf_dir,
                                                    classifier_dropout=0.0)
  name = model.load_adapter(start, set_active=True)
  model.train_adapter(name)
  assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == (
      want_count)
  model.compile(optimizer=optimization.create_optimizer(
      LEARNING_RATE, STEPS, 1, weight_decay_rate=WEIGHT_DECAY,
      adapter_weight_decay_rate=WEIGHT_DECAY, optimizer="adamw"))
  losses = [float(model.train_on_batch(inputs, labels))
            for _ in range(STEPS)]
  np.testing.assert_allclose(losses, want_losses, rtol=2e-5)

  # AdapterHub's trained adapter, loaded into a second model, equals ours.
  theirs = modeling.BertAdapterModel.from_pretrained(hf_dir)
  theirs.load_adapter(end, load_as=name)
  ours_vars = model.adapter_view(name).checkpoint_variables()
  their_vars = theirs.adapter_view(name).checkpoint_variables()
  assert sorted(ours_vars) == sorted(their_vars)
  first = modeling.BertAdapterModel.from_pretrained(hf_dir)
  first.load_adapter(start, load_as=name)
  first_vars = first.adapter_view(name).checkpoint_variables()
  # Adam divides by sqrt(v): where a gradient is near zero, float32
  # rounding moves a step's direction by much more than the gradient's own
  # error, so each tensor is compared by the size of its change.
  ratios = {}
  for key, (variable, tag) in ours_vars.items():
    if tag.kind not in ("adapter", "head"):
      continue
    want = their_vars[key][0].numpy()
    change = np.linalg.norm(want - first_vars[key][0].numpy())
    assert change > 1e-3, key  # Every trained tensor moved.
    ratios[key] = np.linalg.norm(variable.numpy() - want) / change
  worst = max(ratios, key=ratios.get)
  print(method, worst, ratios[worst])
  assert ratios[worst] <= 1e-3, (worst, ratios[worst])
