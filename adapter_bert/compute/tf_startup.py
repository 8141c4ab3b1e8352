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
hosts (`prefer_onednn`) and XLA:CPU's faster-compiling emitters
(`prefer_fast_xla_cpu_compiles`), which must happen before TensorFlow loads:
library modules that build or train the model import it first.
"""

import importlib.metadata
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


XLA_FLAGS_ENV = "XLA_FLAGS"
# XLA:CPU's loop emitters instead of its newer MLIR fusion emitters.
LEGACY_CPU_EMITTERS_FLAG = "--xla_cpu_use_fusion_emitters=false"
# TensorFlow releases whose XLA knows that flag (XLA aborts the process on a
# flag it does not know, so it is set only where it was tried).
_EMITTER_FLAG_RELEASES = ("2.21.",)


def _installed_tensorflow_version():
  try:
    return importlib.metadata.version("tensorflow")
  except importlib.metadata.PackageNotFoundError:
    return None


def prefer_fast_xla_cpu_compiles(environ=None, tf_version=None):
  """Asks XLA:CPU for its loop emitters, which compile faster.

  Every XLA-compiled kernel (kernels.py) is compiled again for each new
  batch width, so with length bucketing a run's first epoch pays for ~10
  compiles per width. Measured on a 2-core Skylake VM (TF 2.21, MiniLM
  adapters step, then 14 kernels a width): 1.8-2.0 s of compiles per new
  width instead of 2.7-3.7 s, with the same step time; a lone LayerNorm
  kernel also ran ~20% faster.
  GPU compiles are not affected (the flag is XLA:CPU's).

  Appends the flag to XLA_FLAGS unless the user already chose
  xla_cpu_use_fusion_emitters there, and only on TensorFlow releases where
  it was tried. It takes effect only if XLA has not started in this process.

  Args:
    environ: the environment to change (os.environ by default).
    tf_version: the installed tensorflow version (for tests).

  Returns:
    The value XLA_FLAGS now has, or None if unset.
  """
  environ = os.environ if environ is None else environ
  flags = environ.get(XLA_FLAGS_ENV, "")
  if "xla_cpu_use_fusion_emitters" in flags:
    return flags  # The user's choice.
  if tf_version is None:  # Looked up only when it decides.
    tf_version = _installed_tensorflow_version()
  if tf_version and tf_version.startswith(_EMITTER_FLAG_RELEASES):
    environ[XLA_FLAGS_ENV] = " ".join(
        part for part in (flags, LEGACY_CPU_EMITTERS_FLAG) if part)
  return environ.get(XLA_FLAGS_ENV)


prefer_onednn()
prefer_fast_xla_cpu_compiles()

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
