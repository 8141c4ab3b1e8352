"""Atomic file writes: a reader (or a crash) sees the old file or the new one.

Writes go to a temporary file in the same directory, are flushed and fsynced,
then renamed over the destination (rename is atomic on POSIX filesystems).
"""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_open(path, mode="w", encoding="utf-8"):
  """Opens a temporary file that replaces `path` when the block succeeds.

  Args:
    path: destination file.
    mode: "w" (text) or "wb" (bytes).
    encoding: text encoding for "w".

  Yields:
    A writable file object. If the block raises, `path` is left untouched and
    the temporary file is removed.
  """
  if mode not in ("w", "wb"):
    raise ValueError("atomic_open supports only 'w' and 'wb', got %r" % mode)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp_path = tempfile.mkstemp(
      prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
  try:
    kwargs = {} if "b" in mode else {"encoding": encoding, "newline": ""}
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp_path)
    raise


def atomic_write_text(path, text):
  """Writes `text` to `path` atomically."""
  with atomic_open(path, "w") as f:
    f.write(text)


def atomic_write_bytes(path, data):
  """Writes `data` to `path` atomically."""
  with atomic_open(path, "wb") as f:
    f.write(data)
