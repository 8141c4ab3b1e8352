"""TensorFlow's native start-up notes do not reach the user's terminal."""

import os
import subprocess
import sys

from adapter_bert.compute import tf_startup
import tiny_fixtures

SAMPLE = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795319862.893166   17852 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results.
I0000 00:00:1795319862.893732   17852 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
E0000 00:00:1795319865.430389   17852 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
W0000 00:00:1795319865.430389   17852 some_file.cc:10] a real warning about the job

E0000 00:00:1795319865.430389   17852 other.cc:7] a real error
"""


def test_filter_drops_start_up_notes_and_keeps_the_rest():
  assert tf_startup.kept_lines(SAMPLE) == [
      "W0000 00:00:1795319865.430389   17852 some_file.cc:10] a real warning "
      "about the job",
      "E0000 00:00:1795319865.430389   17852 other.cc:7] a real error"]


def _run_fresh(code, unset):
  """Runs python code in a fresh process without the variables `unset`."""
  env = {k: v for k, v in os.environ.items() if k not in unset}
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, env=env, cwd=tiny_fixtures.REPO_ROOT,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr
  return proc


def _stderr_of(code):
  # Without TF_CPP_MIN_LOG_LEVEL, as a user's shell has it.
  return _run_fresh(code, unset=("TF_CPP_MIN_LOG_LEVEL",)).stderr


def test_import_quietly_in_a_fresh_process():
  stderr = _stderr_of(
      "import sys\nfrom adapter_bert.compute import tf_startup\n"
      "tf = tf_startup.import_quietly()\n"
      "assert 'tensorflow_text' in sys.modules\n"
      "print(tf.constant(2) * 3)\n"
      "sys.stderr.write('done\\n')\n")
  noisy = [line for line in stderr.splitlines() if tf_startup.is_noise(line)]
  assert noisy == [], stderr
  assert stderr.splitlines()[-1] == "done"


def test_verbose_keeps_everything():
  """With verbose=True nothing is captured (the notes may then appear)."""
  stderr = _stderr_of(
      "import sys\nfrom adapter_bert.compute import tf_startup\n"
      "tf = tf_startup.import_quietly(verbose=True)\n"
      "sys.stderr.write('done\\n')\n")
  assert stderr.splitlines()[-1] == "done"


def test_prefer_onednn_sets_the_default_on_x86_only():
  env = {}
  assert tf_startup.prefer_onednn(env, machine="x86_64") == "1"
  assert env == {tf_startup.ONEDNN_ENV: "1"}
  chosen = {tf_startup.ONEDNN_ENV: "0"}  # The user's choice is kept.
  assert tf_startup.prefer_onednn(chosen, machine="x86_64") == "0"
  other = {}
  assert tf_startup.prefer_onednn(other, machine="aarch64") is None
  assert other == {}


def test_library_import_asks_for_onednn_before_tensorflow_loads():
  proc = _run_fresh(
      "import os, platform, sys\n"
      "import modeling\n"
      "assert 'tensorflow' in sys.modules\n"
      "from tensorflow.python.util import _pywrap_util_port\n"
      "print(platform.machine(), os.environ.get('TF_ENABLE_ONEDNN_OPTS'),\n"
      "      _pywrap_util_port.IsMklEnabled())",
      unset=(tf_startup.ONEDNN_ENV,))
  machine, value, enabled = proc.stdout.split()
  if machine.lower() in tf_startup.X86_64_MACHINES:
    # Set in time: TensorFlow loaded with its oneDNN rewrites on.
    assert (value, enabled) == ("1", "True")
  else:
    assert value == "None"


def test_prefer_fast_xla_cpu_compiles_appends_the_flag_once():
  flag = tf_startup.LEGACY_CPU_EMITTERS_FLAG
  env = {}
  assert tf_startup.prefer_fast_xla_cpu_compiles(env, "2.21.0") == flag
  assert tf_startup.prefer_fast_xla_cpu_compiles(env, "2.21.0") == flag
  # The user's other flags are kept; the flag goes after them.
  theirs = {tf_startup.XLA_FLAGS_ENV: "--xla_dump_to=/tmp/d"}
  assert (tf_startup.prefer_fast_xla_cpu_compiles(theirs, "2.21.1")
          == "--xla_dump_to=/tmp/d " + flag)
  # A choice of emitters the user made is theirs.
  chosen = {tf_startup.XLA_FLAGS_ENV: "--xla_cpu_use_fusion_emitters=true"}
  assert (tf_startup.prefer_fast_xla_cpu_compiles(chosen, "2.21.0")
          == "--xla_cpu_use_fusion_emitters=true")
  # A release where the flag was not tried (XLA would abort on an unknown
  # flag): nothing set.
  untried = {}
  assert tf_startup.prefer_fast_xla_cpu_compiles(untried, "2.22.0") is None
  assert untried == {}


def test_installed_xla_accepts_the_emitter_flag():
  """A fresh process that imports the library compiles with the flag set."""
  proc = _run_fresh(
      "import os\n"
      "from adapter_bert.compute import kernels\n"
      "import tensorflow as tf\n"
      "f = tf.function(lambda x: tf.tanh(x) * 2.0, jit_compile=True)\n"
      "print(float(f(tf.constant(0.5))))\n"
      "print(os.environ.get('XLA_FLAGS'))",
      unset=(tf_startup.XLA_FLAGS_ENV,))
  value, flags = proc.stdout.splitlines()
  assert abs(float(value) - 2 * 0.46211715726) < 1e-6
  if tf_startup._installed_tensorflow_version().startswith(
      tf_startup._EMITTER_FLAG_RELEASES):
    assert flags == tf_startup.LEGACY_CPU_EMITTERS_FLAG
