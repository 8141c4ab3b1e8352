"""Imports TensorFlow without its native start-up chatter on stderr.

TensorFlow's C++ runtime writes lines such as "All log messages before
absl::InitializeLog() ...", "oneDNN custom operations are on ...", "Could not
find cuda drivers ..." and "failed call to cuInit ..." straight to file
descriptor 2 when it is imported and when it first lists devices;
TF_CPP_MIN_LOG_LEVEL does not reach all of them. A user who made a typo should
see one `error:` line, not five lines of runtime notes before it.

`import_quietly()` points descriptor 2 at a temporary file while TensorFlow
(and tensorflow-text) load and the devices are listed, then restores it and
copies back every captured line that is not one of the known start-up notes,
so real warnings and errors still reach the user.

Importing this module also picks TensorFlow's oneDNN CPU kernels on x86-64
hosts (`prefer_onednn`), which must happen before TensorFlow loads: library
modules that build or train the model import it first.
"""

import os
import platform
import re
import sys
import tempfile

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# platform.machine() of the hosts whose TensorFlow builds have oneDNN kernels.
X86_64_MACHINES = ("x86_64", "amd64")


def prefer_onednn(environ=None, machine=None):
  """Asks for TensorFlow's oneDNN CPU kernels unless the user chose already.

  TensorFlow turns its oneDNN graph rewrites on by default only on x86 CPUs
  with AVX512-VNNI, AVX512-BF16 or AMX. Elsewhere (an AVX-512 Skylake Xeon,
  say) batched products such as attention's run through Eigen one small
  matrix at a time; with oneDNN, measured on a 2-core Skylake VM (TF 2.21,
  MiniLM, batch 32 x 128): attention's products 8-14 -> 28-48 GFLOP/s, the
  adapters train step 3.8 -> 2.85 s, the eval step 1.85 -> 1.05 s.

  Sets TF_ENABLE_ONEDNN_OPTS=1 on x86-64 when the variable is unset; a value
  the user set (0 too) is kept. It takes effect only if TensorFlow has not
  been imported yet in this process.

  Args:
    environ: the environment to change (os.environ by default).
    machine: platform.machine() (for tests).

  Returns:
    The value TF_ENABLE_ONEDNN_OPTS now has, or None if unset.
  """
  environ = os.environ if environ is None else environ
  machine = platform.machine() if machine is None else machine
  if ONEDNN_ENV not in environ and machine.lower() in X86_64_MACHINES:
    environ[ONEDNN_ENV] = "1"
  return environ.get(ONEDNN_ENV)


prefer_onednn()

# Start-up notes of the TensorFlow/XLA runtime that say nothing about the job.
_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\)"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|TF-TRT Warning"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions"
    r"|rebuild TensorFlow with the appropriate compiler flags")


def is_noise(line):
  """True for a known runtime start-up note."""
  return bool(_NOISE.search(line))


def kept_lines(text):
  """The non-empty lines of captured stderr that are not start-up notes."""
  return [line for line in text.splitlines() if line and not is_noise(line)]


def import_quietly(verbose=False):
  """Imports tensorflow and tensorflow_text; returns the tensorflow module.

  Args:
    verbose: keep every start-up line (nothing is captured).

  Returns:
    The `tensorflow` module.
  """
  if verbose or "tensorflow" in sys.modules:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf
  sys.stderr.flush()
  saved = os.dup(2)
  captured = tempfile.TemporaryFile()
  os.dup2(captured.fileno(), 2)
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_text  # noqa: F401 pylint: disable=g-import-not-at-top,unused-import
    tf.config.list_physical_devices()  # Platform start-up (cuInit) happens here.
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    captured.seek(0)
    text = captured.read().decode("utf-8", "replace")
    captured.close()
    kept = kept_lines(text)
    if kept:
      sys.stderr.write("\n".join(kept) + "\n")
  return tf
