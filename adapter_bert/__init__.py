"""adapter-bert for TensorFlow 2 / Keras: adapter tuning of BERT encoders.

One namespace, in layers from the ground up (each imports only the layers
below it; `tests/test_layering.py` checks it):

  errors      UserError, the one exception a user's mistake raises
  compute     kernels, activations, precision, the optimizer's update rule
  text        tokenizers (the original FullTokenizer, the in-graph one)
  adapters    the method registry, hook points, configs, one file a method,
              composition blocks
  storage     file formats: TF1 checkpoints, atomic writes, Hugging Face and
              AdapterHub directories, PyTorch files
  model       BERT, adapters and heads as Keras layers; BertAdapterModel;
              adapter directories; the multi-task model
  data        GLUE, CSV/JSONL, CoNLL readers, input pipelines, metrics,
              frozen activations
  serving     SavedModel and TFLite exports taking raw text
  training    the training loop, runners, distribution, run configs
  cli         the command lines (run_classifier.py, run_ner.py,
              scripts/export_saved_model.py)
"""

# First, before any module here loads TensorFlow or Keras: picks TensorFlow's
# oneDNN kernels on x86-64 hosts where TensorFlow would not on its own (AVX2
# AMD hosts; see compute.tf_startup), whichever module a user imports first.
from adapter_bert.compute import tf_startup  # noqa: F401  pylint: disable=unused-import

__version__ = "0.1.0"
