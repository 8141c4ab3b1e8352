"""Chooses the `tf.distribute.Strategy` that training and prediction run under.

  * `tpu`: a Cloud TPU (TPU node by name, a TPU VM with `--tpu_name=local`,
    or a gRPC address given as `--master`), via `TPUStrategy`.
  * `mirrored`: all local GPUs (or the logical CPUs when there is no GPU).
  * `multi_worker`: `MultiWorkerMirroredStrategy` configured by `TF_CONFIG`.
  * `one_device`: GPU:0 if there is a GPU, else CPU:0.
  * `auto`: `tpu` if `--use_tpu`, `mirrored` with more than one GPU, else
    `one_device`.

Every failure caused by the user's choice (no TPU of that name, no
credentials, a bad `TF_CONFIG`) is raised as `errors.UserError` with one line.
"""

import json
import os
import socket
import threading

from absl import logging
import cloud_tpu_client
import tensorflow as tf

from adapter_bert import errors

VALID_DISTRIBUTIONS = ("auto", "tpu", "mirrored", "multi_worker", "one_device")

# Looking a TPU up through the Cloud TPU API goes through the GCE metadata
# server and the network, which can stall for a long time where they are not
# reachable; these bound each such call.
TPU_LOOKUP_TIMEOUT_S = 120
TPU_CONFIGURE_TIMEOUT_S = 600
TPU_HEALTHY_TIMEOUT_S = 1200
# TensorFlow waits without limit for a TPU worker it cannot reach, so the
# workers' gRPC ports are probed first with this timeout.
TPU_CONNECT_TIMEOUT_S = 30
_DEFAULT_TPU_PORT = 8470

# TPU states from which the node will not come back without being recreated.
_DEAD_TPU_STATES = ("TERMINATED", "PREEMPTED", "DELETING")


def _short(exception, limit=300):
  """One line describing `exception`, for a UserError message."""
  text = " ".join(str(exception).split())
  if len(text) > limit:
    text = text[:limit] + "..."
  return "%s: %s" % (type(exception).__name__, text) if text else (
      type(exception).__name__)


def _call_with_timeout(fn, timeout_s):
  """Runs `fn()` in a daemon thread and returns its result.

  Args:
    fn: callable without arguments.
    timeout_s: seconds to wait for it.

  Returns:
    What `fn` returned.

  Raises:
    TimeoutError: if `fn` did not finish in time (it is left running).
    Exception: whatever `fn` raised.
  """
  outcome = {}

  def target():
    try:
      outcome["value"] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      outcome["error"] = e

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    raise TimeoutError("no answer within %d seconds" % timeout_s)
  if "error" in outcome:
    raise outcome["error"]
  return outcome.get("value")


def per_replica_batch_size(global_batch_size, num_replicas, flag_name):
  """Returns the batch size of each replica.

  Args:
    global_batch_size: int, the batch size given by the user (all replicas).
    num_replicas: int, `strategy.num_replicas_in_sync`.
    flag_name: name of the flag that set `global_batch_size`, with or
      without the leading dashes (e.g. "train_batch_size").

  Returns:
    int, `global_batch_size // num_replicas`.

  Raises:
    errors.UserError: if the batch size is not positive or not divisible.
  """
  flag = "--" + flag_name.lstrip("-")
  if global_batch_size <= 0:
    raise errors.UserError("%s=%d must be positive" %
                           (flag, global_batch_size))
  if global_batch_size % num_replicas:
    raise errors.UserError("%s=%d is not divisible by the %d replicas" %
                           (flag, global_batch_size, num_replicas))
  return global_batch_size // num_replicas


def resolve_strategy(distribution="auto",
                     use_tpu=False,
                     tpu_name=None,
                     tpu_zone=None,
                     gcp_project=None,
                     master=None,
                     num_tpu_cores=8,
                     devices=None):
  """Returns the distribution strategy asked for.

  Args:
    distribution: one of `VALID_DISTRIBUTIONS` (None means "auto").
    use_tpu: bool, --use_tpu; implies distribution "tpu".
    tpu_name: Cloud TPU name, or "local" on a TPU VM.
    tpu_zone: GCE zone of the TPU (looked up from the metadata server when
      None).
    gcp_project: GCP project of the TPU (looked up when None).
    master: gRPC address of a TPU worker, used when `tpu_name` is not given.
    num_tpu_cores: the number of TPU cores expected; a warning is logged when
      the TPU has another number.
    devices: optional list of device names for "mirrored" (for tests).

  Returns:
    A `tf.distribute.Strategy`.

  Raises:
    errors.UserError: unknown distribution, a TPU that cannot be reached, a
      missing or invalid TF_CONFIG, or conflicting flags.
  """
  distribution = (distribution or "auto").lower()
  if distribution not in VALID_DISTRIBUTIONS:
    raise errors.UserError("--distribution=%s is not one of %s" %
                           (distribution, ", ".join(VALID_DISTRIBUTIONS)))
  if use_tpu and distribution not in ("auto", "tpu"):
    raise errors.UserError("--use_tpu conflicts with --distribution=%s" %
                           distribution)

  if distribution == "auto":
    if use_tpu:
      distribution = "tpu"
    elif len(tf.config.list_physical_devices("GPU")) > 1:
      distribution = "mirrored"
    else:
      distribution = "one_device"
    logging.info("--distribution=auto chose %s", distribution)

  if distribution == "tpu":
    return _tpu_strategy(tpu_name, tpu_zone, gcp_project, master,
                         num_tpu_cores)
  if distribution == "mirrored":
    return _mirrored_strategy(devices)
  if distribution == "multi_worker":
    return _multi_worker_strategy()
  return _one_device_strategy()


def _one_device_strategy():
  if tf.config.list_logical_devices("GPU"):
    device = "/gpu:0"
  else:
    device = "/cpu:0"
  return tf.distribute.OneDeviceStrategy(device)


def _mirrored_strategy(devices):
  if not devices:
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
      devices = [d.name for d in gpus]
    else:
      devices = [d.name for d in tf.config.list_logical_devices("CPU")]
  logging.info("MirroredStrategy over %s", ", ".join(devices))
  try:
    return tf.distribute.MirroredStrategy(devices=devices)
  except (ValueError, RuntimeError, tf.errors.OpError) as e:
    raise errors.UserError("--distribution=mirrored over %s failed: %s" %
                           (", ".join(devices), _short(e))) from None


def _multi_worker_strategy():
  """MultiWorkerMirroredStrategy after checking TF_CONFIG."""
  raw = os.environ.get("TF_CONFIG")
  if not raw or not raw.strip():
    raise errors.UserError(
        "--distribution=multi_worker needs the TF_CONFIG environment variable "
        "(a JSON object with 'cluster' and 'task'), which is not set")
  try:
    config = json.loads(raw)
  except ValueError as e:
    raise errors.UserError("TF_CONFIG is not valid JSON (%s)" % e) from None
  if not isinstance(config, dict):
    raise errors.UserError("TF_CONFIG must be a JSON object, got %s" %
                           type(config).__name__)
  cluster = config.get("cluster")
  task = config.get("task")
  if not isinstance(cluster, dict) or not cluster:
    raise errors.UserError("TF_CONFIG has no 'cluster' object")
  if not isinstance(task, dict) or "type" not in task or "index" not in task:
    raise errors.UserError(
        "TF_CONFIG has no 'task' object with 'type' and 'index'")
  task_type = task["type"]
  task_index = task["index"]
  members = cluster.get(task_type)
  if not isinstance(members, list):
    raise errors.UserError(
        "TF_CONFIG task type %r is not a job of the cluster (jobs: %s)" %
        (task_type, ", ".join(sorted(cluster))))
  if (not isinstance(task_index, int) or task_index < 0 or
      task_index >= len(members)):
    raise errors.UserError(
        "TF_CONFIG task index %r is out of range for the %d %r tasks" %
        (task_index, len(members), task_type))
  try:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  except (ValueError, RuntimeError, tf.errors.OpError) as e:
    raise errors.UserError(
        "--distribution=multi_worker could not start from TF_CONFIG (task "
        "%s %d): %s" % (task_type, task_index, _short(e))) from None
  logging.info("MultiWorkerMirroredStrategy with %d replicas",
               strategy.num_replicas_in_sync)
  return strategy


def _tpu_strategy(tpu_name, tpu_zone, gcp_project, master, num_tpu_cores):
  """Connects to the TPU, initialises it and returns a TPUStrategy."""
  target = tpu_name or master
  if not target:
    target = os.environ.get("TPU_NAME")
  if not target:
    raise errors.UserError(
        "--use_tpu needs --tpu_name (a Cloud TPU name, or 'local' on a TPU "
        "VM) or --master (a grpc:// address of the TPU worker)")
  if target == "local" or target.startswith("grpc://"):
    where = "%s=%s" % ("tpu_name" if tpu_name else "master", target)
  else:
    where = "tpu_name=%s zone=%s project=%s" % (
        target, tpu_zone or "(from metadata)",
        gcp_project or "(from metadata)")

  if target.startswith("grpc://"):
    endpoints = [_parse_grpc_endpoint(a) for a in target.split(",")]
  elif target != "local":
    # A TPU node known to the Cloud TPU API: check it and its TF version.
    endpoints = _check_cloud_tpu(target, tpu_zone, gcp_project, where)
  else:
    endpoints = []  # Directly attached (TPU VM).
  for host, port in endpoints:
    _check_reachable(host, port, where)

  step = "creating the TPUClusterResolver"
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=target, zone=tpu_zone, project=gcp_project)
    step = "connecting to the TPU cluster"
    tf.config.experimental_connect_to_cluster(resolver)
    step = "initialising the TPU system"
    tf.tpu.experimental.initialize_tpu_system(resolver)
    step = "creating the TPUStrategy"
    strategy = tf.distribute.TPUStrategy(resolver)
  except errors.UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError("TPU %s: failed %s: %s" %
                           (where, step, _short(e))) from None

  replicas = strategy.num_replicas_in_sync
  if num_tpu_cores and replicas != num_tpu_cores:
    logging.warning(
        "--num_tpu_cores=%d but the TPU (%s) has %d cores; using all %d",
        num_tpu_cores, where, replicas, replicas)
  logging.info("TPUStrategy on %s with %d replicas", where, replicas)
  return strategy


def _check_cloud_tpu(tpu_name, tpu_zone, gcp_project, where):
  """Checks a TPU node through the Cloud TPU API and sets its TF version.

  Args:
    tpu_name: the TPU node name.
    tpu_zone: its zone or None.
    gcp_project: its project or None.
    where: description of the TPU for messages.

  Returns:
    list of (host, port) of the TPU workers.

  Raises:
    errors.UserError: if the TPU cannot be found, is dead, has no matching
      TensorFlow version, or does not become healthy.
  """
  step = "looking the TPU up through the Cloud TPU API"
  try:
    client = _call_with_timeout(
        lambda: cloud_tpu_client.Client(
            tpu=tpu_name, zone=tpu_zone, project=gcp_project),
        TPU_LOOKUP_TIMEOUT_S)
    state = _call_with_timeout(client.state, TPU_LOOKUP_TIMEOUT_S)
    if state in _DEAD_TPU_STATES:
      raise errors.UserError("TPU %s is %s; recreate it" % (where, state))
    step = "reading the TPU's TensorFlow version"
    version = _call_with_timeout(client.runtime_version, TPU_LOOKUP_TIMEOUT_S)
    if version and str(version).startswith("tpu-vm"):
      raise errors.UserError(
          "TPU %s is a TPU VM (runtime %s): run on the VM itself with "
          "--tpu_name=local" % (where, version))
    logging.info("TPU %s: state %s, TensorFlow version %s", where, state,
                 version)
    if version != tf.__version__:
      step = "switching the TPU to TensorFlow %s" % tf.__version__
      _call_with_timeout(
          lambda: client.configure_tpu_version(
              tf.__version__, restart_type="ifNeeded"),
          TPU_CONFIGURE_TIMEOUT_S)
    step = "waiting for the TPU to become healthy"
    client.wait_for_healthy(timeout_s=TPU_HEALTHY_TIMEOUT_S)
    step = "reading the TPU's network endpoints"
    endpoints = _call_with_timeout(client.network_endpoints,
                                   TPU_LOOKUP_TIMEOUT_S)
    return [(e["ipAddress"], int(e.get("port") or _DEFAULT_TPU_PORT))
            for e in endpoints]
  except errors.UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError("TPU %s: failed %s: %s" %
                           (where, step, _short(e))) from None


def _parse_grpc_endpoint(address):
  """Returns (host, port) of "grpc://host[:port]"."""
  host_port = address.strip()[len("grpc://"):]
  host, sep, port = host_port.rpartition(":")
  if not sep:
    return host_port, _DEFAULT_TPU_PORT
  try:
    return host, int(port)
  except ValueError:
    raise errors.UserError("--master=%s is not a grpc://host:port address" %
                           address) from None


def _check_reachable(host, port, where):
  """Raises UserError unless a TCP connection to host:port opens in time."""
  try:
    connection = socket.create_connection((host, port),
                                          timeout=TPU_CONNECT_TIMEOUT_S)
    connection.close()
  except OSError as e:
    raise errors.UserError("TPU %s: cannot reach the TPU worker at %s:%d: %s"
                           % (where, host, port, _short(e))) from None


def distribute_dataset(strategy, dataset):
  """`strategy.experimental_distribute_dataset(dataset)`, or on one CPU
  device the dataset itself.

  A distributed dataset is read through a MultiDeviceIterator, whose own
  input pipeline has tf.data's default options: its autotuning thread
  sleeps for a period that doubles up to a minute, and deleting the
  iterator waits for that sleep (the end of a CPU training run waited up
  to 56 s there). With one replica on the host CPU there is nothing to
  distribute or copy: the dataset's own iterator runs, with its options
  (autotuning off), and `strategy.run` takes its plain tensors.
  """
  try:
    devices = list(strategy.extended.worker_devices)
  except RuntimeError:  # The default (no) strategy: nothing to distribute.
    return strategy.experimental_distribute_dataset(dataset)
  if (len(devices) == 1 and strategy.num_replicas_in_sync == 1
      and tf.DeviceSpec.from_string(devices[0]).device_type in (None, "CPU")):
    return dataset
  return strategy.experimental_distribute_dataset(dataset)
