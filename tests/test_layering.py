"""The package's layering contract, read from the source (no imports run).

`adapter_bert` is built from the ground up: each layer imports only the
layers below it, a module's imports sit at its top (an import inside a
function is how cycles hide), and the modules of one layer import each other
without cycles. The command lines are the one exception to the second rule:
they check their flags before TensorFlow loads, so they import the runners
inside `main`. Optional third-party dependencies (torch, transformers, cloud
TPU clients) may load lazily anywhere; the rule is about our own modules.

`import-linter` (configured in pyproject.toml) checks the same layers on
the import graph that `grimp` builds; this test also checks the function-level
imports, which that graph does not tell apart.
"""

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "adapter_bert"

# Bottom first. A module may import its own layer and those before it.
LAYERS = ("errors", "compute", "text", "adapters", "storage", "model", "data",
          "serving", "training", "cli")
# Where an import inside a function of our own modules is allowed.
LAZY_ALLOWED = ("cli",)


def _modules(package=PACKAGE):
  """{dotted name: path} of every module under the package."""
  out = {}
  for path in package.rglob("*.py"):
    parts = path.relative_to(package.parent).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _layer(module):
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def _imports(path, modules):
  """[(imported module, line, inside a function)] of our own modules."""
  tree = ast.parse(path.read_text(), str(path))
  found = []

  def visit(node, nested):
    for child in ast.iter_child_nodes(node):
      inner = nested or isinstance(child, (ast.FunctionDef,
                                           ast.AsyncFunctionDef))
      names = []
      if isinstance(child, ast.Import):
        names = [a.name for a in child.names]
      elif isinstance(child, ast.ImportFrom) and child.level == 0:
        names = [child.module + "." + a.name for a in child.names]
        names = [n if n in modules else child.module for n in names]
      for name in names:
        if name.split(".")[0] == "adapter_bert":
          found.append((name, child.lineno, inner))
      visit(child, inner)

  visit(tree, False)
  return found


def _violations(package=PACKAGE):
  modules = _modules(package)
  upward, lazy, graph = [], [], {}
  for module, path in sorted(modules.items()):
    mine = _layer(module)
    for target, line, nested in _imports(path, modules):
      where = "%s:%d" % (path.relative_to(package.parent), line)
      theirs = _layer(target)
      if mine is not None and theirs is not None and (
          LAYERS.index(theirs) > LAYERS.index(mine)):
        upward.append("%s imports %s (layer %s above %s)" % (
            where, target, theirs, mine))
      if nested and mine not in LAZY_ALLOWED:
        lazy.append("%s imports %s inside a function" % (where, target))
      if target in modules and target != module:
        graph.setdefault(module, set()).add(target)
  return upward, lazy, _cycles(graph)


def _cycles(graph):
  """Each import cycle among modules, once, as 'a -> b -> a'."""
  cycles, state = set(), {}

  def walk(node, stack):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      # A package's __init__ importing its own modules is not a cycle with them.
      if node.startswith(nxt + "."):
        continue
      if state.get(nxt) == "open":
        loop = stack[stack.index(nxt):]
        start = loop.index(min(loop))
        cycles.add(" -> ".join(loop[start:] + loop[:start] + [min(loop)]))
      elif nxt not in state:
        walk(nxt, stack)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      walk(node, [])
  return sorted(cycles)


def test_every_module_is_in_a_layer():
  strays = [m for m in _modules() if m != "adapter_bert" and
            _layer(m) not in LAYERS]
  assert not strays, "modules outside the layers %s: %s" % (LAYERS, strays)


def test_no_layer_imports_one_above_it():
  upward, _, _ = _violations()
  assert not upward, "\n".join(upward)


def test_no_function_level_imports_of_our_modules():
  _, lazy, _ = _violations()
  assert not lazy, "\n".join(lazy)


def test_no_import_cycles():
  _, _, cycles = _violations()
  assert not cycles, "\n".join(cycles)


def test_the_contract_catches_an_upward_import(tmp_path):
  """The check itself fails on a new upward import (and a lazy one)."""
  copy = tmp_path / "adapter_bert"
  shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
  kernels = copy / "compute" / "kernels.py"
  kernels.write_text(kernels.read_text() +
                     "\nfrom adapter_bert.training import trainer\n"
                     "def _late():\n  from adapter_bert.model import modeling\n")
  upward, lazy, _ = _violations(copy)
  assert any("compute/kernels.py" in v and "adapter_bert.training.trainer" in v
             for v in upward), upward
  assert any("compute/kernels.py" in v and "modeling" in v for v in lazy), lazy


def test_import_linter_contract():
  """import-linter's layers contract (pyproject.toml) holds."""
  lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
  if lint is None:
    pytest.skip("import-linter is not installed (pip install -e '.[test]')")
  result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
