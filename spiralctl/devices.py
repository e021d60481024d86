"""User device names -> tinygrad devices, and why a device does not work here."""

from __future__ import annotations

import ctypes.util
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from spiralctl.errors import SpiralError
from spiralctl.kernels.programs import before_cpu_device

# What users type, the tinygrad devices behind it (first that works wins), and how to get it.
BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {
    "cpu": (
        ("CPU",),
        "install clang (Debian: apt-get install -y clang; macOS: xcode-select --install)",
    ),
    "cuda": (("CUDA", "NV"), "needs an NVIDIA GPU with its driver and CUDA"),
    "amd": (("AMD", "HIP"), "needs an AMD GPU with the amdgpu driver (ROCm)"),
    "metal": (("METAL",), "needs a Mac with Metal"),
    "opencl": (("CL",), "needs an OpenCL driver (pocl-opencl-icd runs OpenCL on the CPU, for testing)"),
}
AUTO_ORDER = ("cuda", "amd", "metal", "cpu")


def tinygrad_version() -> str:
    try:
        return version("tinygrad")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class DeviceStatus:
    name: str
    device: str
    ok: bool
    reason: str
    renderer: str = ""  # what turns kernels into code there (for CUDA: NVRTC, or PTX without libnvrtc)
    kernels: str = ""  # spiralctl's kernel family there: cpu or gpu


# tinygrad renderer classes by what a user knows them as
RENDERER_NAMES = {
    "CUDARenderer": "NVRTC",
    "PTXRenderer": "PTX",
    "NVCCRenderer": "NVCC",
    "ClangJITRenderer": "clang",
}


def renderer_name(renderer: object) -> str:
    """A tinygrad renderer as a user knows it: CUDA compiled by NVRTC, or PTX, clang, LLVM, ..."""
    name = type(renderer).__name__
    return RENDERER_NAMES.get(name, name.removesuffix("Renderer"))


def _missing_driver(base: str) -> str | None:
    """A quick look for the driver before tinygrad imports a runtime (which takes seconds)."""
    if base == "METAL" and sys.platform != "darwin":
        return "Metal is only on macOS"
    if base == "CUDA" and ctypes.util.find_library("cuda") is None:
        return "libcuda (the NVIDIA driver's CUDA library) was not found"
    if base == "NV" and not os.path.exists("/dev/nvidiactl"):
        return "no NVIDIA GPU device (/dev/nvidiactl) was found"
    if base == "AMD" and not os.path.exists("/dev/kfd"):
        return "no AMD GPU device (/dev/kfd) was found"
    if base == "HIP" and ctypes.util.find_library("amdhip64") is None:
        return "libamdhip64 (ROCm's HIP library) was not found"
    return None


CACHE_PROBLEM = (
    "tinygrad's kernel cache {path} cannot be opened ({error}); make its folder writable, "
    "point CACHEDB at a file in a writable folder, or set CACHELEVEL=0"
)
DAMAGED_CACHE = (
    "tinygrad's kernel cache {path} is not a cache ({error}); point CACHEDB at a new file, "
    "or set CACHELEVEL=0"
)


def _cache_path() -> str:
    from tinygrad.helpers import CACHEDB

    return str(CACHEDB)


def probe(device: str) -> tuple[bool, str]:
    """Can tinygrad open `device` here? Returns (ok, reason when not)."""
    base = device.split(":")[0].upper()
    compiler = os.environ.get("CC", "clang")  # tinygrad's C compiler
    if base == "CPU" and ":LLVM" not in device.upper() and shutil.which(compiler) is None:
        if compiler != "clang":
            return False, f"CC names {compiler!r}, which is not found; unset CC to use clang"
        return False, "clang is not installed; " + BACKENDS["cpu"][1]
    if (missing := _missing_driver(base)) is not None:
        return False, missing
    from tinygrad import Device

    try:
        if base == "CPU":
            before_cpu_device()
        Device[device]
    except sqlite3.OperationalError as exc:  # tinygrad opens its kernel cache as it sets a device up
        return False, CACHE_PROBLEM.format(path=_cache_path(), error=exc)
    except sqlite3.DatabaseError as exc:
        if type(exc) is not sqlite3.DatabaseError:  # not about the file: a bug, reported as others
            return False, f"{type(exc).__name__}: {exc}"[:200]
        return False, DAMAGED_CACHE.format(path=_cache_path(), error=exc)  # not an SQLite database
    except subprocess.CalledProcessError as exc:  # the C compiler, on the device's own programs
        command = exc.cmd if isinstance(exc.cmd, str) else exc.cmd[0]
        return False, f"the C compiler ({command}) failed with exit code {exc.returncode}; check CC"
    except Exception as exc:  # tinygrad raises many kinds when a runtime is missing
        text = str(exc).strip().splitlines()
        return False, (f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__)[:200]
    return True, ""


def list_backends() -> list[DeviceStatus]:
    from spiralctl.kernels.family import kernel_family

    rows = []
    for name, (devices, hint) in BACKENDS.items():
        for device in devices:
            ok, reason = probe(device)
            if not ok and name != "cpu" and "clang" not in reason:
                reason = f"{reason} ({hint})"
            renderer = ""
            if ok:
                from tinygrad import Device

                renderer = renderer_name(Device[device].renderer)
            family = kernel_family(device).name if ok else ""
            rows.append(DeviceStatus(name, device, ok, reason, renderer, family))
    return rows


def _known(device: str) -> bool:
    """Is `device` a tinygrad device name (CPU, CUDA:1, CPU:LLVM, ...)?"""
    from tinygrad.device import Device

    base = device.split(":")[0].upper()
    return bool(base) and base in Device._devices and base not in ("DISK", "NPY", "TINYFS", "NULL")


def resolve_device(requested: str = "auto") -> str:
    """Turn `auto`, `cpu`, `cuda`, `amd`, `metal` or a tinygrad device string into a working device."""
    name = requested.strip()
    key = name.lower()
    if "," in name:
        first = name.split(",")[0].strip() or "cuda:0"
        raise SpiralError(
            f"{name}: spiralctl runs on one device at a time; give one, such as {{device}} {first} "
            "(cuda:1 is the second GPU)",
            option="device",
        )
    if key == "auto":
        for backend in AUTO_ORDER:
            for device in BACKENDS[backend][0]:
                if probe(device)[0]:
                    return device
        cpu_reason = probe("CPU")[1]
        if not cpu_reason.startswith("clang is not installed"):  # the cache, CC, or tinygrad
            raise SpiralError(f"auto: the CPU cannot be used: {cpu_reason}", option="device")
        raise SpiralError(
            "auto: no usable device found; " + BACKENDS["cpu"][1] + " (see `spiralctl devices`)",
            option="device",
        )
    candidates = BACKENDS[key][0] if key in BACKENDS else (name.upper(),)
    if key not in BACKENDS and not _known(name):
        names = ", ".join(["auto", *BACKENDS])
        raise SpiralError(
            f"{name or repr(name)} is not a device; use one of {names}, or a tinygrad device such as "
            "CPU:LLVM (see `spiralctl devices`)",
            option="device",
        )
    reasons = []
    for device in candidates:
        ok, reason = probe(device)
        if ok:
            return device
        reasons.append(f"{device}: {reason}")
    working = [d for b in AUTO_ORDER for d in BACKENDS[b][0] if probe(d)[0]]
    if cache := next((reason for reason in reasons if "kernel cache" in reason), None):
        raise SpiralError(f"{name} does not work here: {cache.split(': ', 1)[1]}", option="device")
    instead = f"use {{device}} {working[0].lower()}" if working else BACKENDS["cpu"][1]
    raise SpiralError(f"{name} does not work here ({'; '.join(reasons)}); {instead}", option="device")
