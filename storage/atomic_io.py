"""Atomic file writes: a reader (or a crash) sees the old file or the new one.

Writes go to a temporary file in the same directory, are flushed and fsynced,
then renamed over the destination (rename is atomic on POSIX filesystems).
The new file gets the permissions a plain `open(path, "w")` would give it
(those of the file it replaces, else 0666 less the umask), not the 0600 of a
temporary file.
"""

import contextlib
import os
import stat
import tempfile


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
  fd, tmp_path = tempfile.mkstemp(
      prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
  try:
    kwargs = {} if "b" in mode else {"encoding": encoding, "newline": ""}
    with os.fdopen(fd, mode, **kwargs) as f:
      os.fchmod(f.fileno(), _mode_for(path))
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp_path)
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
