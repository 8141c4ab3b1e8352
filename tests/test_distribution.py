"""Tests for distribution.py (strategy selection, TPU connection, batches)."""

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import cloud_tpu_client
import pytest
import tensorflow as tf

from adapter_bert.training import distribution
from adapter_bert import errors

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------
# Plain choices.


def test_unknown_distribution_lists_valid_ones():
  with pytest.raises(errors.UserError) as info:
    distribution.resolve_strategy("parameter_server")
  message = str(info.value)
  assert "--distribution=parameter_server" in message
  for name in distribution.VALID_DISTRIBUTIONS:
    assert name in message
  assert "\n" not in message


def test_use_tpu_conflicts_with_other_distribution():
  with pytest.raises(errors.UserError, match="--use_tpu conflicts"):
    distribution.resolve_strategy("mirrored", use_tpu=True)


def test_auto_and_one_device_on_cpu():
  if tf.config.list_physical_devices("GPU"):
    pytest.skip("checks the CPU-only choice")
  strategy = distribution.resolve_strategy("auto")
  assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
  assert strategy.num_replicas_in_sync == 1
  assert "CPU:0" in strategy.extended.worker_devices[0]
  mirrored = distribution.resolve_strategy("mirrored", devices=["/cpu:0"])
  assert isinstance(mirrored, tf.distribute.MirroredStrategy)
  assert mirrored.num_replicas_in_sync == 1


def test_one_cpu_device_reads_the_dataset_itself():
  # A distributed dataset is read through a MultiDeviceIterator whose own
  # pipeline autotunes (tf.data's defaults), and deleting that iterator
  # waits for the autotuning thread's sleep (up to a minute): the end of a
  # CPU training run waited 40-56 s there. On one CPU device the trainer
  # reads the dataset itself, with its own options (autotuning off).
  dataset = tf.data.Dataset.range(6).batch(2)
  one = tf.distribute.OneDeviceStrategy("/cpu:0")
  assert distribution.distribute_dataset(one, dataset) is dataset
  default = tf.distribute.get_strategy()
  assert [int(b[0]) for b in distribution.distribute_dataset(
      default, dataset)] == [0, 2, 4]


def test_per_replica_batch_size():
  assert distribution.per_replica_batch_size(32, 4, "train_batch_size") == 8
  assert distribution.per_replica_batch_size(7, 1, "--eval_batch_size") == 7
  with pytest.raises(errors.UserError) as info:
    distribution.per_replica_batch_size(30, 4, "train_batch_size")
  assert str(info.value) == (
      "--train_batch_size=30 is not divisible by the 4 replicas")
  with pytest.raises(errors.UserError, match="--eval_batch_size=0 must be"):
    distribution.per_replica_batch_size(0, 2, "eval_batch_size")


# ----------------------------------------------------------------------------
# Multi-worker.


def test_multi_worker_without_tf_config(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(errors.UserError, match="needs the TF_CONFIG"):
    distribution.resolve_strategy("multi_worker")


@pytest.mark.parametrize("tf_config, match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
    ('{"cluster": {"worker": ["a:1"]}}', "no 'task'"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     "task type 'chief' is not a job"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     "index 1 is out of range"),
])
def test_multi_worker_invalid_tf_config(monkeypatch, tf_config, match):
  monkeypatch.setenv("TF_CONFIG", tf_config)
  with pytest.raises(errors.UserError, match=match):
    distribution.resolve_strategy("multi_worker")


# ----------------------------------------------------------------------------
# TPU, without a TPU.


def test_use_tpu_without_name_or_master(monkeypatch):
  monkeypatch.delenv("TPU_NAME", raising=False)
  with pytest.raises(errors.UserError, match="--use_tpu needs --tpu_name"):
    distribution.resolve_strategy(use_tpu=True)


def test_unreachable_tpu_fails_fast_with_one_line(monkeypatch):
  # The real Cloud TPU client: with no credentials or network it fails; if
  # it would stall instead, the lookup timeout bounds it.
  monkeypatch.setattr(distribution, "TPU_LOOKUP_TIMEOUT_S", 20)
  start = time.time()
  with pytest.raises(errors.UserError) as info:
    distribution.resolve_strategy(
        use_tpu=True, tpu_name="nonexistent-tpu", tpu_zone="us-central1-b",
        gcp_project="p")
  assert time.time() - start < 60
  message = str(info.value)
  assert "\n" not in message
  assert "tpu_name=nonexistent-tpu" in message
  assert "zone=us-central1-b" in message
  assert "project=p" in message
  assert "failed" in message
  assert info.value.__cause__ is None
  assert info.value.__suppress_context__


def test_unreachable_master_fails_fast():
  # Find a port nobody listens on.
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  with pytest.raises(errors.UserError) as info:
    distribution.resolve_strategy(use_tpu=True,
                                  master="grpc://127.0.0.1:%d" % port)
  assert "master=grpc://127.0.0.1:%d" % port in str(info.value)
  assert "cannot reach" in str(info.value)


class _FakeTpu(object):
  """Fakes of the Cloud TPU client and TF's TPU entry points; logs calls."""

  def __init__(self, monkeypatch, state="READY", version="2.0.0",
               replicas=8, port=None, client_error=None, hang_s=None):
    self.calls = []
    fake = self

    class FakeClient(object):

      def __init__(self, tpu=None, zone=None, project=None):
        fake.calls.append(("Client", tpu, zone, project))
        if hang_s:
          time.sleep(hang_s)
        if client_error:
          raise client_error

      def state(self):
        fake.calls.append(("state",))
        return state

      def runtime_version(self):
        fake.calls.append(("runtime_version",))
        return version

      def configure_tpu_version(self, version, restart_type="always"):
        fake.calls.append(("configure_tpu_version", version, restart_type))

      def wait_for_healthy(self, timeout_s=1200, interval=30):
        del interval
        fake.calls.append(("wait_for_healthy", timeout_s))

      def network_endpoints(self):
        fake.calls.append(("network_endpoints",))
        return [{"ipAddress": "127.0.0.1", "port": str(port)}]

    class FakeResolver(object):

      def __init__(self, tpu=None, zone=None, project=None):
        fake.calls.append(("TPUClusterResolver", tpu, zone, project))

    class FakeStrategy(object):

      def __init__(self, resolver):
        assert isinstance(resolver, FakeResolver)
        fake.calls.append(("TPUStrategy",))
        self.num_replicas_in_sync = replicas

    def connect(resolver):
      assert isinstance(resolver, FakeResolver)
      fake.calls.append(("experimental_connect_to_cluster",))

    def initialize(resolver):
      assert isinstance(resolver, FakeResolver)
      fake.calls.append(("initialize_tpu_system",))

    monkeypatch.setattr(cloud_tpu_client, "Client", FakeClient)
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver",
                        FakeResolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", connect)
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system",
                        initialize)
    monkeypatch.setattr(tf.distribute, "TPUStrategy", FakeStrategy)

  def names(self):
    return [call[0] for call in self.calls]


@pytest.fixture
def listening_port():
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(1)
  yield server.getsockname()[1]
  server.close()


def test_tpu_node_path_in_order(monkeypatch, listening_port, caplog):
  fake = _FakeTpu(monkeypatch, replicas=4, port=listening_port)
  with caplog.at_level(logging.WARNING):
    strategy = distribution.resolve_strategy(
        use_tpu=True, tpu_name="my-tpu", tpu_zone="europe-west4-a",
        gcp_project="my-project", num_tpu_cores=8)
  assert strategy.num_replicas_in_sync == 4
  assert fake.calls == [
      ("Client", "my-tpu", "europe-west4-a", "my-project"),
      ("state",),
      ("runtime_version",),
      ("configure_tpu_version", tf.__version__, "ifNeeded"),
      ("wait_for_healthy", distribution.TPU_HEALTHY_TIMEOUT_S),
      ("network_endpoints",),
      ("TPUClusterResolver", "my-tpu", "europe-west4-a", "my-project"),
      ("experimental_connect_to_cluster",),
      ("initialize_tpu_system",),
      ("TPUStrategy",),
  ]
  # 8 cores were expected but the (fake) TPU has 4: a warning says so.
  assert any("--num_tpu_cores=8" in r.getMessage() and "4 cores" in
             r.getMessage() for r in caplog.records)


def test_tpu_node_already_on_our_version(monkeypatch, listening_port, caplog):
  fake = _FakeTpu(monkeypatch, version=tf.__version__, port=listening_port)
  with caplog.at_level(logging.WARNING):
    distribution.resolve_strategy(
        "tpu", tpu_name="my-tpu", tpu_zone="z", gcp_project="p",
        num_tpu_cores=8)
  assert "configure_tpu_version" not in fake.names()
  assert fake.names()[-1] == "TPUStrategy"
  assert not any("--num_tpu_cores" in r.getMessage() for r in caplog.records)


def test_tpu_vm_local_and_master_skip_the_cloud_client(monkeypatch,
                                                       listening_port):
  fake = _FakeTpu(monkeypatch)
  distribution.resolve_strategy(use_tpu=True, tpu_name="local")
  assert fake.calls == [
      ("TPUClusterResolver", "local", None, None),
      ("experimental_connect_to_cluster",),
      ("initialize_tpu_system",),
      ("TPUStrategy",),
  ]
  fake.calls[:] = []
  master = "grpc://127.0.0.1:%d" % listening_port
  distribution.resolve_strategy(use_tpu=True, master=master)
  assert fake.calls[0] == ("TPUClusterResolver", master, None, None)
  assert "Client" not in fake.names()


@pytest.mark.parametrize("kwargs, match", [
    (dict(state="TERMINATED"), "is TERMINATED"),
    (dict(version="tpu-vm-tf-2.16.1"), "is a TPU VM"),
    (dict(client_error=ValueError("Could not lookup TPU metadata from name "
                                  "'my-tpu'.\nException: 404")),
     "failed looking the TPU up.*Could not lookup TPU metadata"),
])
def test_tpu_node_errors(monkeypatch, kwargs, match):
  _FakeTpu(monkeypatch, **kwargs)
  with pytest.raises(errors.UserError, match=match) as info:
    distribution.resolve_strategy(use_tpu=True, tpu_name="my-tpu",
                                  tpu_zone="z", gcp_project="p")
  assert "tpu_name=my-tpu zone=z project=p" in str(info.value)
  assert "\n" not in str(info.value)


def test_tpu_lookup_that_hangs_is_bounded(monkeypatch):
  _FakeTpu(monkeypatch, hang_s=30)
  monkeypatch.setattr(distribution, "TPU_LOOKUP_TIMEOUT_S", 0.5)
  start = time.time()
  with pytest.raises(errors.UserError, match="no answer within"):
    distribution.resolve_strategy(use_tpu=True, tpu_name="my-tpu",
                                  tpu_zone="z", gcp_project="p")
  assert time.time() - start < 10


def test_tpu_initialisation_failure_is_a_user_error(monkeypatch):
  _FakeTpu(monkeypatch)

  def failing_initialize(resolver):
    del resolver
    raise tf.errors.NotFoundError(None, None, "TPUs not found in the cluster")

  monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system",
                      failing_initialize)
  with pytest.raises(errors.UserError,
                     match="tpu_name=local: failed initialising the TPU "
                     "system: NotFoundError: TPUs not found"):
    distribution.resolve_strategy(use_tpu=True, tpu_name="local")


# ----------------------------------------------------------------------------
# Two real workers of MultiWorkerMirroredStrategy on this machine.

_WORKER_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import tensorflow as tf
    from adapter_bert.training import distribution
    from adapter_bert.compute import optimization

    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    rng = np.random.RandomState(0)
    X = rng.normal(size=(8, 5)).astype(np.float32)
    W = rng.normal(size=(5, 2)).astype(np.float32)

    def loss_fn(w, x):
      # Divided by the global batch size (8), whatever the share of x. The
      # 0.1 puts the gradient norm above the clip norm (1) on the first steps
      # and below it later, so that summing and averaging over the workers
      # give different results (Adam alone is blind to a constant scale).
      return 0.1 * tf.reduce_sum(tf.square(tf.matmul(x, w) - 1.0)) / 8.0

    def train(strategy, x):
      with strategy.scope():
        w = tf.Variable(W)
        optimizer = optimization.AdamWeightDecay(0.1)
        optimizer.build([("layer/kernel", w)])
      @tf.function
      def step(s):
        def replica_fn():
          with tf.GradientTape() as tape:
            loss = loss_fn(w, x)
          grads = tape.gradient(loss, [w])
          norm = tf.linalg.global_norm(grads)
          optimizer.apply_gradients(grads, s)
          return norm
        return strategy.run(replica_fn)
      norms = [step(tf.constant(s)) for s in range(3)]
      return w.numpy(), norms

    strategy = distribution.resolve_strategy("multi_worker")
    got, _ = train(strategy, X[task * 4:(task + 1) * 4])
    want, norms = train(tf.distribute.get_strategy(), X)
    print("RESULT " + json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "norms": [float(n) for n in norms],
        "diff": float(np.max(np.abs(got - want))),
        "moved": float(np.max(np.abs(want - W)))}))
""")


def test_two_multi_worker_processes_match_one_device(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(_WORKER_SCRIPT)
  ports = []
  sockets = []
  for _ in range(2):
    s = socket.socket()
    s.bind(("localhost", 0))
    sockets.append(s)
    ports.append(s.getsockname()[1])
  for s in sockets:
    s.close()
  cluster = {"worker": ["localhost:%d" % p for p in ports]}
  workers = []
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    workers.append(subprocess.Popen(
        [sys.executable, str(script), REPO_ROOT], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = []
  try:
    for worker in workers:
      stdout, stderr = worker.communicate(timeout=240)
      outputs.append((worker.returncode, stdout, stderr))
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
  for returncode, stdout, stderr in outputs:
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert returncode == 0 and lines, stdout[-2000:] + stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["replicas"] == 2
    assert result["moved"] > 0.05
    assert max(result["norms"]) > 1.0 > min(result["norms"])
    assert result["diff"] <= 1e-5
