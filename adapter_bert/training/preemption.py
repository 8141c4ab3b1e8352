"""SIGTERM, as a preemptible VM or a batch scheduler sends it.

Training stops at the next step boundary, saves a checkpoint there and the
program exits with one line and status 143; the same command resumes from
that step. Outside training (start-up, evaluation) the program stops at once
with the same line, as Ctrl-C does.

Python runs a signal handler only between bytecodes of the main thread, and
the main thread spends training inside one compiled loop of many steps. So
the handler is helped by a thread that wakes up on the signal itself (the
interpreter writes each signal's number to `signal.set_wakeup_fd` when it
arrives) and sets a boolean variable that the training loop reads before
every step. (`tf.distribute.experimental.PreemptionCheckpointHandler` does
this for object-based checkpoints of multi-worker and TPU jobs; the
checkpoints here are the reference toolkit's name-based ones.)
"""

import signal
import socket
import threading

EXIT_STATUS = 128 + signal.SIGTERM


class Preempted(BaseException):
  """The run was asked to stop (SIGTERM); the message says where it stood.

  A BaseException, as KeyboardInterrupt: no `except Exception` swallows it.
  """


class PreemptionWatch:
  """Turns SIGTERM into a stop request the training loop sees at each step.

  Attributes:
    requested: threading.Event, set once SIGTERM arrived.
    training: True while a training loop runs (it stops itself); otherwise
      the handler raises Preempted at once.
  """

  def __init__(self):
    self.requested = threading.Event()
    self.training = False
    self._flags = []
    self._lock = threading.Lock()
    self._installed = False

  def install(self):
    """Installs the handler (main thread only). Returns self."""
    if self._installed:
      return self
    signal.signal(signal.SIGTERM, self._handler)
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    self._sockets = (reader, writer)  # Kept open for the process' life.
    thread = threading.Thread(target=self._watch, args=(reader,),
                              name="sigterm-watch", daemon=True)
    thread.start()
    self._installed = True
    return self

  def add_flag(self, variable):
    """A boolean tf.Variable set to True when SIGTERM arrives."""
    with self._lock:
      self._flags.append(variable)
      if self.requested.is_set():
        variable.assign(True)

  def remove_flag(self, variable):
    with self._lock:
      if variable in self._flags:
        self._flags.remove(variable)

  def _request(self):
    with self._lock:
      if self.requested.is_set():
        return
      self.requested.set()
      for variable in self._flags:
        variable.assign(True)

  def _watch(self, reader):
    while True:
      try:
        data = reader.recv(64)
      except OSError:
        return
      if not data:
        return
      if signal.SIGTERM in data:
        self._request()

  def _handler(self, signum, frame):
    del signum, frame
    self._request()
    if not self.training:
      raise Preempted("terminated (SIGTERM)")


_WATCH = None


def install():
  """Installs the process' SIGTERM watch (the command-line programs do)."""
  global _WATCH
  if _WATCH is None:
    _WATCH = PreemptionWatch()
  return _WATCH.install()


def current():
  """The installed watch, or None (library use without the command line)."""
  return _WATCH
