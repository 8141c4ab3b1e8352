"""Atomic file writes: a reader (or a crash) sees the old file or the new one.

Writes go to a temporary file in the same directory, are flushed and fsynced,
then renamed over the destination (rename is atomic on POSIX filesystems).
The new file gets the permissions a plain `open(path, "w")` would give it
(those of the file it replaces, else 0666 less the umask), not the 0600 of a
temporary file.
"""

import contextlib
import errno
import json
import logging
import os
import re
import socket
import stat
import tempfile
import time

from adapter_bert.errors import UserError

# Temporary files are `.<name>.<pid>-<random>.tmp`: whoever finds one can
# tell whether its writer still runs.
TMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[^.]+\.tmp$")


def _umask():
  """The process umask, read without changing it where possible."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)  # Not thread-safe; only where /proc is missing.
  os.umask(mask)
  return mask


def process_alive(pid):
  """Whether process `pid` exists (this process counts as alive)."""
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:
    return True  # Exists, owned by someone else.
  return True


def remove_orphans(path):
  """Removes `<path>.tmp-<pid>` files whose writer process has died.

  A writer that names its temporary file after its pid and was killed
  (SIGKILL, power loss) leaves it behind; the next writer of `path` calls
  this. Local paths only.
  """
  directory = os.path.dirname(path) or "."
  prefix = os.path.basename(path) + ".tmp-"
  if "://" in path or not os.path.isdir(directory):
    return []
  removed = []
  for name in os.listdir(directory):
    if not name.startswith(prefix) or not name[len(prefix):].isdigit():
      continue
    if process_alive(int(name[len(prefix):])):
      continue
    try:
      os.remove(os.path.join(directory, name))
      removed.append(name)
    except OSError:
      pass
  return removed


def owner_gone(name):
  """Whether a temporary file `name` (TMP_PATTERN) was left by a dead process.

  False for names that do not carry a pid (their owner cannot be told).
  """
  m = TMP_PATTERN.match(name)
  return bool(m) and not process_alive(int(m.group("pid")))


def _mode_for(path):
  try:
    return stat.S_IMODE(os.stat(path).st_mode)
  except OSError:
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_open(path, mode="w", encoding="utf-8"):
  """Opens a temporary file that replaces `path` when the block succeeds.

  Args:
    path: destination file.
    mode: "w" (text) or "wb" (bytes).
    encoding: text encoding for "w".

  Yields:
    A writable file object. If the block raises, `path` is left untouched and
    the temporary file is removed. (A process killed with SIGKILL cannot
    remove it: a hidden `.<name>.*.tmp` file may then remain beside `path`,
    which is itself intact.)
  """
  if mode not in ("w", "wb"):
    raise ValueError("atomic_open supports only 'w' and 'wb', got %r" % mode)
  directory = os.path.dirname(os.path.abspath(path))
  try:
    fd, tmp_path = tempfile.mkstemp(
        prefix=".%s.%d-" % (os.path.basename(path), os.getpid()),
        suffix=".tmp", dir=directory)
  except OSError as e:
    raise UserError("cannot write %s: %s" % (path, e.strerror or e)) from None
  try:
    kwargs = {} if "b" in mode else {"encoding": encoding, "newline": ""}
    with os.fdopen(fd, mode, **kwargs) as f:
      os.fchmod(f.fileno(), _mode_for(path))
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException as e:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp_path)
    if isinstance(e, OSError):
      # No space, no permission, a read-only file system: `path` is as it
      # was.
      raise UserError("cannot write %s: %s" % (path, e.strerror or e)) from None
    raise
  _fsync_directory(directory)


def _fsync_directory(directory):
  """Makes the rename durable (best effort; not all systems allow it)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def atomic_write_text(path, text):
  """Writes `text` to `path` atomically."""
  with atomic_open(path, "w") as f:
    f.write(text)


def atomic_write_bytes(path, data):
  """Writes `data` to `path` atomically."""
  with atomic_open(path, "wb") as f:
    f.write(data)


# ---------------------------------------------------------------------------
# One run at a time per directory.
# ---------------------------------------------------------------------------

LOCK_FILE = ".lock"


@contextlib.contextmanager
def staged_directory(directory, what="directory"):
  """Builds a directory in a hidden temporary one beside it, then renames it
  into place (replacing an old one only once the new one is complete).

  Yields the temporary path to write into. On any error it is removed and
  `directory` is as it was; an OSError becomes one UserError line naming
  `what` and the directory.
  """
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(directory)
  parent = os.path.dirname(directory)
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(directory) +
                           ".tmp-", dir=parent)
  except OSError as e:
    raise UserError("cannot write %s %s: %s"
                    % (what, directory, e.strerror or e)) from None
  try:
    yield tmp
    umask = _umask()
    for root, dirs, files in os.walk(tmp):  # The usual permissions.
      os.chmod(root, 0o777 & ~umask)
      for name in dirs:
        os.chmod(os.path.join(root, name), 0o777 & ~umask)
      for name in files:
        os.chmod(os.path.join(root, name), 0o666 & ~umask)
    if os.path.exists(directory):
      old = tempfile.mkdtemp(prefix="." + os.path.basename(directory) +
                             ".old-", dir=parent)
      os.rmdir(old)
      os.rename(directory, old)
      try:
        os.rename(tmp, directory)
      except BaseException:
        os.rename(old, directory)
        raise
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, directory)
  except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(e, OSError):
      raise UserError("cannot write %s %s: %s"
                      % (what, directory, e.strerror or e)) from None
    raise


def read_lock(directory):
  """The holder recorded in `directory`'s lock file, or None (no lock).

  Returns:
    dict with pid, host, started (a time string); {} if unreadable.
  """
  path = os.path.join(directory, LOCK_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      holder = json.load(f)
    return holder if isinstance(holder, dict) else {}
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}


def lock_is_stale(holder):
  """A lock of this host whose process is gone."""
  return (holder is not None and holder.get("host") == socket.gethostname()
          and isinstance(holder.get("pid"), int)
          and not process_alive(holder["pid"]))


def describe_holder(holder):
  return "process %s on %s (since %s)" % (holder.get("pid", "?"),
                                          holder.get("host", "?"),
                                          holder.get("started", "?"))


class DirectoryLock:
  """A lock file (`.lock`: pid, host, start time) for one writer at a time.

  `acquire` creates it atomically (a complete file linked into place, which
  fails if one exists); a lock whose process is gone (same host) is taken
  over with a log line; a live one is refused with one line naming the
  holder. `release` removes it if it is still ours.
  """

  def __init__(self, directory, flag_name="output_dir"):
    self.directory = directory
    self.flag_name = flag_name
    self.path = os.path.join(directory, LOCK_FILE)
    self.held = False

  def acquire(self):
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
      tmp = os.path.join(self.directory, ".lock.%d-%d.tmp" % (
          os.getpid(), time.monotonic_ns()))
      try:
        with open(tmp, "w", encoding="utf-8") as f:
          json.dump(record, f)
        try:
          os.link(tmp, self.path)
          self.held = True
          return self
        except FileExistsError:
          pass
      except OSError as e:
        raise UserError("--%s=%s: cannot create the lock file %s: %s"
                        % (self.flag_name, self.directory, self.path,
                           e.strerror or e)) from None
      finally:
        with contextlib.suppress(OSError):
          os.remove(tmp)
      holder = read_lock(self.directory)
      if holder is None:
        continue  # Released meanwhile.
      if lock_is_stale(holder):
        logging.getLogger("absl").warning(
            "Taking over the lock %s of %s, which no longer runs", self.path,
            describe_holder(holder))
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
        continue
      raise UserError("--%s=%s is in use by %s; one run at a time per "
                      "output directory (lock file %s)"
                      % (self.flag_name, self.directory,
                         describe_holder(holder), self.path))
    raise UserError("--%s=%s: could not take the lock file %s"
                    % (self.flag_name, self.directory, self.path))

  def release(self):
    if not self.held:
      return
    self.held = False
    holder = read_lock(self.directory)
    if holder and holder.get("pid") == os.getpid():
      with contextlib.suppress(OSError):
        os.remove(self.path)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
