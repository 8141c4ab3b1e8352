"""PyTorch's tensor files read (and safetensors written) without PyTorch.

- safetensors: an 8-byte little-endian header length, a JSON header
  ({name: {"dtype", "shape", "data_offsets"}}, optional "__metadata__"),
  then the raw little-endian bytes. Read and written through the
  `safetensors` package, whose checks of the whole file come first.
- `.bin` (`torch.save`, zip format): `<archive>/data.pkl`, a pickle of a
  dict of tensors whose storages are the files `<archive>/data/<key>`. It is
  read with an unpickler that knows only what a dict of plain tensors
  needs (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
  `_rebuild_parameter`, the typed storages) and refuses every other global,
  so a planted pickle cannot import or call anything: nothing runs.
"""

import collections
import io
import json
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np
import safetensors
import safetensors.numpy

from adapter_bert.errors import UserError
from adapter_bert.errors import clip_value

# safetensors dtype names -> NumPy ("BF16" is read into float32).
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}

# torch typed storages -> NumPy ("BFloat16Storage" read into float32).
_STORAGES = {"DoubleStorage": np.float64, "FloatStorage": np.float32,
             "HalfStorage": np.float16, "LongStorage": np.int64,
             "IntStorage": np.int32, "ShortStorage": np.int16,
             "CharStorage": np.int8, "ByteStorage": np.uint8,
             "BoolStorage": np.bool_, "BFloat16Storage": "bfloat16"}


def _bfloat16_to_float32(raw):
  return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)


def _refuse_duplicate_keys(pairs):
  """A JSON object hook: a key listed twice is an error, not "last wins"."""
  seen = set()
  for key, _ in pairs:
    if key in seen:
      raise ValueError("its header lists %s twice" % clip_value(key))
    seen.add(key)
  return dict(pairs)


def read_safetensors(path):
  """{name: NumPy array} of a safetensors file.

  The `safetensors` package checks the whole file before any value is used
  (header length and JSON, known dtypes, shape x dtype = byte length,
  offsets in range, sorted, contiguous and covering the body); names listed
  twice, which its JSON reader would let the last one win, are refused here.

  Raises:
    UserError: for a file that is not one, or holds a dtype NumPy cannot
      hold (naming the file and what is wrong).
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UserError("%s: cannot read: %s" % (path, e.strerror or e)) from None
  try:
    if len(data) < 8:
      raise ValueError("shorter than its 8-byte header length")
    (size,) = struct.unpack("<Q", data[:8])
    json.loads(data[8:8 + size].decode("utf-8"),
               object_pairs_hook=_refuse_duplicate_keys)
    tensors = safetensors.deserialize(data)
  except (ValueError, UnicodeDecodeError,
          safetensors.SafetensorError) as e:
    raise UserError("%s is not a valid safetensors file: %s"
                    % (path, clip_value(str(e)))) from None
  out = collections.OrderedDict()
  for name, info in sorted(tensors, key=lambda item: item[0]):
    dtype = info["dtype"]
    if dtype == "BF16":
      array = _bfloat16_to_float32(info["data"])
    elif dtype in _ST_DTYPES:
      array = np.frombuffer(info["data"],
                            np.dtype(_ST_DTYPES[dtype]).newbyteorder("<"))
    else:
      raise UserError("%s: tensor %s has dtype %s, which is not read (known: "
                      "%s)" % (path, clip_value(name), dtype,
                               ", ".join(sorted(_ST_DTYPES) + ["BF16"])))
    out[name] = array.reshape(info["shape"]).copy()
  return out


def write_safetensors(path, tensors, metadata=None):
  """Writes {name: array} as a safetensors file (by the `safetensors` package).
  """
  arrays = {}
  for name, value in tensors.items():
    array = np.ascontiguousarray(np.asarray(value))
    arrays[name] = array.astype(array.dtype.newbyteorder("<"), copy=False)
  data = safetensors.numpy.save(
      arrays, metadata={str(k): str(v) for k, v in (metadata or {}).items()}
      or None)
  with open(path, "wb") as f:
    f.write(data)


class UnsafePickleError(UserError):
  """A .bin whose pickle names anything but plain tensors."""


class _StorageType:
  """What the pickle's `torch.<X>Storage` global stands for (not callable)."""

  def __init__(self, dtype):
    self.dtype = dtype


class _Storage:
  def __init__(self, array):
    self.array = array


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2, on NumPy: a strided view, copied.

  Raises:
    UserError: for a view reaching outside its storage.
  """
  if not isinstance(storage, _Storage):
    raise UserError("a tensor without a storage")
  array = storage.array
  size, stride, offset = tuple(size), tuple(stride), int(offset)
  if len(size) != len(stride) or offset < 0 or any(
      int(n) < 0 or int(t) < 0 for n, t in zip(size, stride)):
    raise UserError("a tensor of size %r, stride %r" % (size, stride))
  last = offset + sum((int(n) - 1) * int(t) for n, t in zip(size, stride)
                      if int(n) > 0)
  if (all(int(n) > 0 for n in size) and last >= len(array)) or (
      offset > len(array)):
    raise UserError("a tensor reaching outside its storage (size %r, stride "
                    "%r, offset %d, storage %d)" % (size, stride, offset,
                                                     len(array)))
  itemsize = array.dtype.itemsize
  if not size:
    return array[offset:offset + 1].reshape(()).copy()
  view = np.lib.stride_tricks.as_strided(
      array[offset:], shape=tuple(size),
      strides=tuple(s * itemsize for s in stride))
  return view.copy()


def _rebuild_parameter(data, *unused):
  return data


class _TensorUnpickler(pickle.Unpickler):
  """Unpickles a dict of tensors; any other global is refused."""

  def __init__(self, file, path, load_storage):
    super().__init__(file)
    self._path = path
    self._load_storage = load_storage

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return _rebuild_parameter
    if module == "torch" and name in _STORAGES:
      return _StorageType(_STORAGES[name])
    raise UnsafePickleError(
        "%s: refused: its pickle names %s.%s; a .bin is read only when it "
        "holds plain tensors (nothing in it was run)" % (self._path, module,
                                                         name))

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
      raise UnsafePickleError("%s: refused: unknown persistent id %r"
                              % (self._path, pid))
    numel = pid[4] if len(pid) >= 5 else None
    if numel is not None and not isinstance(numel, int):
      raise UserError("%s: storage %s has a size of %s"
                      % (self._path, clip_value(pid[2]), clip_value(numel)))
    return self._load_storage(pid[1], str(pid[2]), numel)


# What the zipfile module raises for a damaged archive.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError,
               zlib.error, NotImplementedError, ValueError, RuntimeError,
               struct.error)


def read_torch_bin(path):
  """{name: NumPy array} of a `torch.save` zip holding a dict of tensors.

  Raises:
    UnsafePickleError: for anything in the pickle but plain tensors.
    UserError: for a file that is not such a zip, or a damaged one (a bad
      CRC, a truncated member, a storage of the wrong size).
  """
  try:
    archive = zipfile.ZipFile(path)
  except _ZIP_ERRORS as e:
    raise UserError("%s is not a PyTorch zip checkpoint (%s); legacy (pre-1.6)"
                    " .bin files are not read" % (path, e)) from None
  with archive:
    try:
      state = _read_archive(archive, path)
    except UserError:  # UnsafePickleError too: its own line, as raised.
      raise
    except _ZIP_ERRORS + (KeyError,) as e:
      raise UserError("%s: a damaged PyTorch zip (%s: %s)"
                      % (path, type(e).__name__, e)) from None
  if not isinstance(state, dict) or not all(
      isinstance(k, str) and isinstance(v, np.ndarray)
      for k, v in state.items()):
    raise UnsafePickleError("%s: refused: the pickle is not a dict of "
                            "tensors" % path)
  return collections.OrderedDict(state)


def _read_archive(archive, path):
  """The unpickled state of an open torch zip (zip errors pass through)."""
  names = archive.namelist()
  pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
  if len(pickles) != 1:
    raise UserError("%s: expected one data.pkl in the zip, found %d"
                    % (path, len(pickles)))
  root = pickles[0][:-len("data.pkl")]
  byteorder = "little"
  if root + "byteorder" in names:
    byteorder = archive.read(root + "byteorder").decode(
        "ascii", "replace").strip()
    if byteorder not in ("little", "big"):
      raise UserError("%s: byteorder %s is not little or big"
                      % (path, clip_value(byteorder)))
  cache = {}

  def load_storage(storage_type, key, numel):
    if not isinstance(storage_type, _StorageType):
      raise UnsafePickleError("%s: refused: a storage of unknown type %r"
                              % (path, storage_type))
    if key not in cache:
      try:
        raw = archive.read(root + "data/" + key)
      except KeyError:
        raise UserError("%s: storage %s is missing from the zip"
                        % (path, clip_value(key))) from None
      if storage_type.dtype == "bfloat16":
        array = _bfloat16_to_float32(raw)
      else:
        dtype = np.dtype(storage_type.dtype).newbyteorder(
            "<" if byteorder == "little" else ">")
        array = np.frombuffer(raw, dtype)
      if numel is not None and int(numel) != len(array):
        raise UserError("%s: storage %s holds %d elements; its pickle says "
                        "%s" % (path, key, len(array), clip_value(numel)))
      cache[key] = _Storage(array)
    return cache[key]

  unpickler = _TensorUnpickler(io.BytesIO(archive.read(pickles[0])), path,
                               load_storage)
  try:
    return unpickler.load()
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError("%s: cannot read its pickle (%s: %s)"
                    % (path, type(e).__name__, clip_value(str(e)))) from None


def read_tensors(path):
  """{name: array} of a .safetensors or .bin file (by its extension)."""
  if str(path).endswith(".safetensors"):
    return read_safetensors(path)
  return read_torch_bin(path)


def exists_any(directory, names):
  """The first of `names` that is a file in `directory`, or None."""
  for name in names:
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  return None


def _pickle_tensor_dict(names_and_keys):
  """The data.pkl of `torch.save(OrderedDict)` of float32 tensors, written
  opcode by opcode (protocol 2, as torch writes it): no torch needed, and
  only the globals read_torch_bin accepts.

  Args:
    names_and_keys: [(name, storage key, shape)] in order.
  """
  out = bytearray(b"\x80\x02")  # PROTO 2

  def text(s):
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE

  def integer(n):
    return b"J" + struct.pack("<i", int(n))  # BININT

  def global_(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

  def tuple_(items):
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE

  out += global_("collections", "OrderedDict") + b")R"  # OrderedDict()
  out += b"("  # MARK for SETITEMS
  for name, key, shape in names_and_keys:
    numel = int(np.prod(shape)) if shape else 1
    strides, step = [], 1
    for dim in reversed(shape):
      strides.insert(0, step)
      step *= int(dim)
    out += text(name)
    out += global_("torch._utils", "_rebuild_tensor_v2")
    storage = tuple_([text("storage"), global_("torch", "FloatStorage"),
                      text(key), text("cpu"), integer(numel)]) + b"Q"
    args = [storage, integer(0), tuple_([integer(d) for d in shape]),
            tuple_([integer(s) for s in strides]), b"\x89",  # NEWFALSE
            global_("collections", "OrderedDict") + b")R"]
    out += tuple_(args) + b"R"
  out += b"u."  # SETITEMS, STOP
  return bytes(out)


def write_torch_bin(path, tensors):
  """Writes {name: array} (as float32) as a `torch.save` zip that
  `torch.load(path, weights_only=True)` reads."""
  archive = os.path.splitext(os.path.basename(path))[0]
  items, blobs = [], []
  for i, name in enumerate(tensors):
    array = np.ascontiguousarray(np.asarray(tensors[name], np.float32))
    items.append((name, str(i), list(array.shape)))
    blobs.append((str(i), array.astype("<f4").tobytes()))
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr(archive + "/data.pkl", _pickle_tensor_dict(items))
    z.writestr(archive + "/byteorder", "little")
    for key, raw in blobs:
      z.writestr(archive + "/data/" + key, raw)
    z.writestr(archive + "/version", "3\n")
