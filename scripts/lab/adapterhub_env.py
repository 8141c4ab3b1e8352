"""What AdapterHub's side needs in its environment beyond AdapterHub.

AdapterHub 1.3 imports torchvision's `StochasticDepth` for a bottleneck
with `stochastic_depth` > 0 (Adapter+), and refuses the config where
torchvision is missing. Its CPU build is not on the package index this
project installs from (the torchvision wheels there need CUDA's libraries),
so `provide_stochastic_depth()` stands in for it: a module
`torchvision.ops.stochastic_depth` whose StochasticDepth(p, mode="row")
does what torchvision documents (the identity in eval mode; while training
each example's whole input is zeroed with probability p and the kept ones
scaled by 1 / (1 - p)). A real torchvision, where one imports, is used as
it is.
"""

import importlib
import importlib.machinery
import sys
import types


def provide_stochastic_depth():
  """Makes `from torchvision.ops.stochastic_depth import StochasticDepth`
  work, and AdapterHub see torchvision as available."""
  try:
    importlib.import_module("torchvision.ops.stochastic_depth")
    return
  except Exception:  # pylint: disable=broad-except
    pass
  import torch

  class StochasticDepth(torch.nn.Module):
    """Drops whole rows (examples) of its input while training."""

    def __init__(self, p, mode="row"):
      super().__init__()
      if mode != "row":
        raise ValueError("only mode='row' stands in here, got %r" % mode)
      self.p = float(p)

    def forward(self, x):
      if not self.training or self.p == 0.0:
        return x
      keep = 1.0 - self.p
      shape = (x.shape[0],) + (1,) * (x.dim() - 1)
      noise = torch.empty(shape, dtype=x.dtype, device=x.device)
      noise.bernoulli_(keep)
      if keep > 0.0:
        noise.div_(keep)
      return x * noise

  names = ("torchvision", "torchvision.ops", "torchvision.ops.stochastic_depth")
  for name in names:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = module
  sys.modules["torchvision"].ops = sys.modules["torchvision.ops"]
  sys.modules["torchvision.ops"].stochastic_depth = sys.modules[names[2]]
  sys.modules[names[2]].StochasticDepth = StochasticDepth
  from adapters.methods import modeling  # AdapterHub's module.
  modeling.is_torchvision_available = lambda: True
