"""BERT, adapters and heads as Keras layers; BertAdapterModel (the original toolkit's `modeling.py`).

The code lives in `adapter_bert.model.modeling`; this file keeps `import modeling` working
for scripts run from the checkout, as with the original toolkit. It is the
same module object, private names included.
"""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("adapter_bert.model.modeling")
