"""Compute precision: the --mixed_precision settings and what `auto` picks.

`none` is float32 everywhere (the reference's numbers). `bfloat16` and
`float16` compute the matrix products in 16 bits with float32 variables;
LayerNorm, softmax and the loss stay float32 (the layers cast for them).
`auto` picks bfloat16 where the hardware multiplies bfloat16 natively and
float32 elsewhere:

  * a CPU with AVX512_BF16 or AMX-BF16 (oneDNN then runs bfloat16 matrix
    products on those instructions; without them it would emulate them,
    slower than float32);
  * a TPU (its matrix units are bfloat16);
  * a GPU of compute capability 8.0 or newer (Ampere on).
"""

# TensorFlow is imported by the functions that need it: the settings are
# checked before it loads.

SETTINGS = ("none", "bfloat16", "float16", "auto")
KERAS_POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16",
                  "float16": "mixed_float16"}
# /proc/cpuinfo flags of the x86 instructions that multiply bfloat16.
CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bfloat16_flags(cpuinfo_path="/proc/cpuinfo"):
  """The CPU's native-bfloat16 flags (a subset of CPU_BFLOAT16_FLAGS).

  Args:
    cpuinfo_path: where the kernel lists the CPU flags (Linux); elsewhere
      the file is absent and no flag is found.

  Returns:
    sorted list of the flags found, empty if none or unreadable.
  """
  try:
    with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
      text = f.read()
  except OSError:
    return []
  found = set()
  for line in text.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "flags":
      found.update(flag for flag in value.split() if flag in CPU_BFLOAT16_FLAGS)
  return sorted(found)


def _gpu_capabilities():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  capabilities = []
  for device in tf.config.list_physical_devices("GPU"):
    details = tf.config.experimental.get_device_details(device)
    capabilities.append(details.get("compute_capability") or (0, 0))
  return capabilities


def resolve(setting, strategy=None, cpuinfo_path="/proc/cpuinfo",
            gpu_capabilities=None):
  """The precision `setting` stands for on this machine, and why.

  Args:
    setting: one of SETTINGS.
    strategy: the tf.distribute strategy the run uses (TPU or not).
    cpuinfo_path: the CPU flag listing (tests point it at a fixture).
    gpu_capabilities: list of (major, minor) compute capabilities of the GPUs
      the run uses; None reads them from TensorFlow.

  Returns:
    (precision, reason): precision in ("none", "bfloat16", "float16").

  Raises:
    ValueError: for a setting outside SETTINGS.
  """
  if setting not in SETTINGS:
    raise ValueError("mixed precision %r is not one of %s"
                     % (setting, ", ".join(SETTINGS)))
  if setting != "auto":
    return setting, "as asked"
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return "bfloat16", "TPU matrix units are bfloat16"
  if gpu_capabilities is None:
    gpu_capabilities = _gpu_capabilities()
  if gpu_capabilities:
    if all(tuple(c) >= (8, 0) for c in gpu_capabilities):
      return "bfloat16", "GPU compute capability %s" % (
          ", ".join("%d.%d" % tuple(c) for c in gpu_capabilities))
    return "none", "GPU without native bfloat16 (compute capability < 8.0)"
  flags = cpu_bfloat16_flags(cpuinfo_path)
  if flags:
    return "bfloat16", "CPU has %s" % ", ".join(flags)
  return "none", "CPU without AVX512_BF16 or AMX-BF16"


def set_policy(precision):
  """Sets Keras's global dtype policy for a resolved precision."""
  import keras  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_dtype_policy(KERAS_POLICIES[precision])
