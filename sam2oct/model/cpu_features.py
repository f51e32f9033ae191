"""What the CPU can do for bf16 inference, read from /proc/cpuinfo.

OpenVINO runs bf16 natively only with AVX512_BF16 or AMX; elsewhere it emulates bf16 or falls
back to fp32, so asking for bf16 there is refused with a clear error rather than silently slow.
"""

import hashlib
import platform

from sam2oct.errors import ConfigError

CPUINFO = "/proc/cpuinfo"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def read_cpuinfo(path: str = CPUINFO) -> str:
    """The text of /proc/cpuinfo ('' where there is none, e.g. macOS or Windows)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _first(text: str, key: str) -> str:
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            return value.strip()
    return ""


def cpu_flags() -> frozenset:
    """The feature flags of the first CPU listed (all cores of one host share them)."""
    return frozenset(_first(read_cpuinfo(), "flags").split())


def bf16_flags() -> tuple:
    """The flags present that give native bf16 matrix multiplies (empty: none)."""
    flags = cpu_flags()
    return tuple(f for f in BF16_FLAGS if f in flags)


def has_bf16() -> bool:
    return bool(bf16_flags())


def require_bf16() -> tuple:
    """The bf16 flags, or a ConfigError (option ``precision``) saying why bf16 cannot run here."""
    found = bf16_flags()
    if not found:
        raise ConfigError(
            f"bf16 needs a CPU with {' or '.join(BF16_FLAGS)} (AVX512-BF16 or AMX); this CPU "
            f"({cpu_model() or platform.machine() or 'unknown'}) has neither: use precision fp32",
            option="precision",
        )
    return found


def cpu_model() -> str:
    return _first(read_cpuinfo(), "model name")


def cpu_signature() -> str:
    """A short digest of the CPU model and its flags: a compiled model is only reused on a CPU
    with the same instruction set (a cache folder may be shared between hosts)."""
    text = read_cpuinfo()
    basis = f"{platform.machine()}|{_first(text, 'model name')}|{' '.join(sorted(_first(text, 'flags').split()))}"
    return hashlib.sha256(basis.encode()).hexdigest()[:12]
