"""Prove that the built extension really contains the CUDA kernels (no GPU needed).

Checks, failing with exit status 1 on any miss:
  1. fastcae._C says it was built with CUDA, for the expected architectures;
  2. the ops have CUDA kernels registered with the dispatcher;
  3. the shared object's .nv_fatbin section holds a cubin (SASS) for every
     expected architecture, read from the fatbin container's entry headers.

Usage: python scripts/check_cuda_build.py [ARCH ...]   (default: TORCH_CUDA_ARCH_LIST or 8.0 9.0)
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
KIND_NAMES = {1: "ptx", 2: "cubin"}


def elf_section(path: Path, wanted: str) -> bytes | None:
    """The bytes of one section of a little-endian ELF64 file, or None."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError(f"{path} is not an ELF64 file")
    (section_offset,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, section_offset + i * entry_size
        )
        return name, offset, size

    _, names_offset, _ = header(names_index)
    for i in range(count):
        name, offset, size = header(i)
        end = data.index(b"\0", names_offset + name)
        if data[names_offset + name : end].decode() == wanted:
            return data[offset : offset + size]
    return None


def fatbin_entries(section: bytes) -> list[tuple[str, int]]:
    """(kind, sm) of every entry of every fatbin container in the section."""
    entries = []
    position = 0
    while position + 16 <= len(section):
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", section, position)
        if magic != FATBIN_MAGIC:
            position += 8  # containers are 8-byte aligned; skip padding
            continue
        entry = position + header_size
        end = entry + fat_size
        while entry < end:
            kind, _unknown, entry_header_size, payload_size = struct.unpack_from("<HHIQ", section, entry)
            (arch,) = struct.unpack_from("<I", section, entry + 28)
            entries.append((KIND_NAMES.get(kind, f"kind{kind}"), arch))
            entry += entry_header_size + payload_size
        position = end
    return entries


def expected_archs(argv: list[str]) -> list[int]:
    spec = " ".join(argv) or os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0 9.0")
    archs = []
    for item in spec.replace(";", " ").replace(",", " ").split():
        major, _, minor = item.removesuffix("+PTX").partition(".")
        archs.append(int(major) * 10 + int(minor or 0))
    return archs


def main(argv: list[str]) -> int:
    import torch

    from fastcae import _C

    wanted = expected_archs(argv)
    failures = []
    if not _C.built_with_cuda():
        failures.append("fastcae._C reports it was built without CUDA")
    print(f"fastcae._C: built_with_cuda={_C.built_with_cuda()} cuda_archs={_C.cuda_archs()!r}")
    for op in ("fastcae::encode_forward", "fastcae::encode_backward"):
        has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
        print(f"{op}: CUDA kernel registered: {has_kernel}")
        if not has_kernel:
            failures.append(f"{op} has no CUDA kernel")
    library = Path(_C.__file__)
    section = elf_section(library, ".nv_fatbin")
    entries = fatbin_entries(section) if section else []
    cubins = sorted({arch for kind, arch in entries if kind == "cubin"})
    print(f"{library.name}: .nv_fatbin {len(section or b'')} bytes, entries {sorted(set(entries))}")
    for arch in wanted:
        if arch not in cubins:
            failures.append(f"no sm_{arch} cubin in {library.name} (found {cubins})")
    for failure in failures:
        print(f"FAIL: {failure}")
    if not failures:
        print(f"OK: CUDA kernels compiled for {', '.join(f'sm_{a}' for a in wanted)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
