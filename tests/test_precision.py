"""--mixed_precision: what `auto` picks from the CPU flags, GPUs and TPU."""

import pytest

from adapter_bert.compute import precision

ZEN4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 "
        "avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu "
        "sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
SAPPHIRE = "flags\t\t: avx2 avx512f amx_bf16 amx_tile amx_int8\n"
ZEN2 = "flags\t\t: fpu sse2 avx2 fma\nbugs\t\t: avx512_bf16_is_not_a_flag_here\n"


def _cpuinfo(tmp_path, text):
  path = tmp_path / "cpuinfo"
  path.write_text(text)
  return str(path)


@pytest.mark.parametrize("text,want,flags", [
    (ZEN4, "bfloat16", ["avx512_bf16"]),
    (SAPPHIRE, "bfloat16", ["amx_bf16"]),
    (ZEN2, "none", []),
])
def test_auto_on_a_cpu_follows_its_bfloat16_flags(tmp_path, text, want, flags):
  path = _cpuinfo(tmp_path, text)
  assert precision.cpu_bfloat16_flags(path) == flags
  got, why = precision.resolve("auto", cpuinfo_path=path, gpu_capabilities=[])
  assert got == want
  assert all(flag in why for flag in flags)


def test_auto_without_cpuinfo_is_float32(tmp_path):
  got, _ = precision.resolve("auto", cpuinfo_path=str(tmp_path / "absent"),
                             gpu_capabilities=[])
  assert got == "none"


def test_auto_on_gpus_needs_compute_capability_8(tmp_path):
  path = _cpuinfo(tmp_path, ZEN4)  # The CPU does not decide on a GPU run.
  assert precision.resolve("auto", cpuinfo_path=path,
                           gpu_capabilities=[(8, 0), (9, 0)])[0] == "bfloat16"
  assert precision.resolve("auto", cpuinfo_path=path,
                           gpu_capabilities=[(8, 0), (7, 5)])[0] == "none"


def test_explicit_settings_are_kept_and_unknown_ones_refused(tmp_path):
  path = _cpuinfo(tmp_path, ZEN2)
  for setting in ("none", "bfloat16", "float16"):
    assert precision.resolve(setting, cpuinfo_path=path)[0] == setting
  with pytest.raises(ValueError, match="bf16"):
    precision.resolve("bf16")
