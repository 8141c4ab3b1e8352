"""FullTokenizer and InGraphTokenizer (the original toolkit's `tokenization.py`).

The code lives in `adapter_bert.text.tokenization`; this file keeps `import tokenization` working
for scripts run from the checkout, as with the original toolkit. It is the
same module object, private names included.
"""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("adapter_bert.text.tokenization")
