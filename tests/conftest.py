"""Shared test setup: quiet TensorFlow, locate ../shared, tiny fixtures."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The kernels users get (oneDNN on x86-64 hosts), set before TensorFlow loads.
from adapter_bert.compute import tf_startup  # noqa: E402,F401

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared")
MINILM_DIR = os.path.join(SHARED_DIR, "bert", "minilm_l6_h384_uncased")
GLUE_DIR = os.path.join(SHARED_DIR, "glue_data")


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_in_pytest_tmp(tmp_path_factory):
  """Temporary files of the session (and of the jobs it starts) go under
  pytest's basetemp, which pytest prunes: tensorflow-datasets leaves one
  `tmp*tfds` folder per builder it makes (DatasetInfo.initialize_from_bucket
  without network), which would pile up in /tmp."""
  where = str(tmp_path_factory.mktemp("tempfile"))
  saved_env, saved_dir = os.environ.get("TMPDIR"), tempfile.tempdir
  os.environ["TMPDIR"], tempfile.tempdir = where, where
  yield
  tempfile.tempdir = saved_dir
  if saved_env is None:
    os.environ.pop("TMPDIR", None)
  else:
    os.environ["TMPDIR"] = saved_env


def _require(path):
  if not os.path.exists(path):
    pytest.skip("needs %s (the shared data beside the checkout) which is absent"
                % path)
  return path


@pytest.fixture
def minilm_dir():
  """Directory of the real MiniLM checkpoint in Google's layout."""
  return _require(MINILM_DIR)


@pytest.fixture
def glue_dir():
  """Directory of the real GLUE MRPC/SST-2/RTE files."""
  return _require(GLUE_DIR)


@pytest.fixture(scope="module")
def tiny_hub():
  """(the tiny BERT of tests/data/adapterhub_tiny in Hugging Face form,
  its inputs as int32 features): where AdapterHub's own adapters sit."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from adapter_bert.model import modeling  # pylint: disable=g-import-not-at-top
  tiny = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                      "adapterhub_tiny")
  model = modeling.BertAdapterModel.from_pretrained(os.path.join(tiny, "hf"))
  inputs = np.load(os.path.join(tiny, "inputs.npz"))
  return model, {k: inputs[k].astype(np.int32) for k in inputs.files}
