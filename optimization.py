"""AdamWeightDecay, warmup + linear decay (the original toolkit's `optimization.py`).

The code lives in `adapter_bert.compute.optimization`; this file keeps `import optimization` working
for scripts run from the checkout, as with the original toolkit. It is the
same module object, private names included.
"""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("adapter_bert.compute.optimization")
