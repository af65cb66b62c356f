"""``train.amp: auto``: bf16 only where it is fast (CUDA with bf16, CPUs with native bf16)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mlrkit.config import ConfigError, TrainConfig, compose_config, load_config
from mlrkit.engine import precision
from mlrkit.engine.precision import amp_note, cpu_has_bf16, resolve_amp

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# trimmed real /proc/cpuinfo entries
X86_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD Ryzen 7 3700X 8-Core Processor
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 fma bmi2
"""
X86_AVX512_NO_BF16 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni
"""
X86_AVX512_BF16 = """processor\t: 0
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
"""
X86_AMX = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8
"""
ARM_BF16 = """processor\t: 0
BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16 i8mm sve
CPU implementer\t: 0x41
"""
ARM_NO_BF16 = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41
"""
# "bf16" inside x86 flags words only counts as the named flags, never as a substring
X86_LOOKALIKE = """flags\t\t: fpu avx2 avx512_fp16 sse4_2
model name\t: bf16 edition
"""


@pytest.mark.parametrize("text,expected", [
    (X86_AVX2, False), (X86_AVX512_NO_BF16, False), (X86_AVX512_BF16, True), (X86_AMX, True),
    (ARM_BF16, True), (ARM_NO_BF16, False), (X86_LOOKALIKE, False), ("", False),
])
def test_cpu_has_bf16_from_cpuinfo(tmp_path, text, expected):
    p = tmp_path / "cpuinfo"
    p.write_text(text)
    assert cpu_has_bf16(p) is expected


def test_cpu_has_bf16_without_a_cpuinfo_file(tmp_path):
    assert cpu_has_bf16(tmp_path / "missing") is False


@pytest.fixture
def native(monkeypatch):
    """Set what the CPU detection answers: ``native(True)`` / ``native(False)``."""
    def set_(value: bool) -> None:
        monkeypatch.setattr(precision, "_native_bf16_cpu", lambda: value)
    return set_


CPU = torch.device("cpu")


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
@pytest.mark.parametrize("has", [True, False])
def test_explicit_choices_are_kept(native, amp, has):
    native(has)
    assert resolve_amp(amp, CPU) == amp


def test_auto_on_cpu_follows_the_detection(native):
    native(True)
    assert resolve_amp("auto", CPU) == "bf16"
    native(False)
    assert resolve_amp("auto", CPU) == "none"


def test_auto_on_this_machine_matches_its_cpuinfo():
    want = "bf16" if sys.platform.startswith("linux") and cpu_has_bf16() else "none"
    assert resolve_amp("auto", CPU) == want


@pytest.mark.parametrize("bf16_ok,expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda(monkeypatch, bf16_ok, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert resolve_amp("auto", torch.device("cuda", 0)) == expected


def test_auto_on_other_devices_is_float32():
    assert resolve_amp("auto", torch.device("meta")) == "none"


def test_unknown_amp_value():
    with pytest.raises(ValueError, match="train.amp: 'fp32'"):
        resolve_amp("fp32", CPU)


def test_note_when_auto_falls_back_on_cpu():
    note = amp_note("auto", "none", CPU)
    assert note is not None and "float32" in note and "auto" in note
    assert amp_note("auto", "bf16", CPU) is None
    assert amp_note("none", "none", CPU) is None
    assert amp_note("auto", "none", torch.device("cuda", 0)) is None


def test_note_warns_on_explicit_bf16_without_native_support():
    warn = amp_note("bf16", "bf16", CPU, native_bf16=False)
    assert warn is not None and "slower" in warn and "bf16" in warn
    assert amp_note("bf16", "bf16", CPU, native_bf16=True) is None
    assert amp_note("bf16", "bf16", torch.device("cuda", 0), native_bf16=False) is None


def test_note_uses_the_detection(native):
    native(False)
    assert amp_note("bf16", "bf16", CPU) is not None
    native(True)
    assert amp_note("bf16", "bf16", CPU) is None


def test_config_default_and_values():
    assert TrainConfig().amp == "auto"
    assert load_config(None).train.amp == "auto"
    for v in ("auto", "none", "bf16", "fp16"):
        assert load_config(None, [f"train.amp={v}"]).train.amp == v
    for bad in ("fp32", "float16", "AUTO"):
        with pytest.raises(ConfigError, match=r"train\.amp: .* is not one of auto, none"):
            load_config(None, [f"train.amp={bad}"])


def test_shipped_configs_use_auto():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert paths
    for p in paths:
        raw = compose_config(p)  # the keys it and its _base_ configs set
        assert raw["train"]["amp"] == "auto", p.name
        assert load_config(p).train.amp == "auto"
        # no comment may still claim a fixed bf16 run
        assert "trained under bfloat16" not in p.read_text(), p.name
