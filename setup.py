"""Build of fastcae and its extension ``fastcae._C``.

The C++ CPU kernels are always built. The CUDA kernels are added when a CUDA
toolkit is found and torch is a CUDA build; ``FASTCAE_CUDA=0`` skips them and
``FASTCAE_CUDA=1`` requires them (the build fails loudly without a toolkit).
``TORCH_CUDA_ARCH_LIST`` is honoured; without it and without a visible GPU
the kernels are compiled for sm_80 and sm_90.

Install with ``pip install --no-build-isolation -e .`` so the extension is
compiled against the torch already in the environment.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import setuptools
from setuptools import setup

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: the folder whose lib64 (or lib) holds libcudart.

    ``nvcc`` on PATH may be a wrapper script outside the toolkit, so its
    parent folder is only one candidate among the usual install locations.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    candidates.append("/usr/local/cuda")
    candidates.extend(sorted(glob.glob("/usr/local/cuda-*"), reverse=True))
    for candidate in candidates:
        if not candidate:
            continue
        root = Path(candidate)
        has_nvcc = (root / "bin" / "nvcc").exists()
        has_cudart = any(glob.glob(str(root / libdir / "libcudart.so*")) for libdir in ("lib64", "lib"))
        if has_nvcc and has_cudart:
            return str(root)
    return None


def library_headers_fallback(cuda_home: str) -> list[str]:
    """Include folders of NVIDIA's pip packages (installed with torch) when the
    toolkit lacks the library headers that torch's CUDA headers include
    (cusparse.h, cublas_v2.h). Passed with -isystem, so the toolkit's own
    headers, given with -I, always win."""
    if (Path(cuda_home) / "include" / "cusparse.h").exists():
        return []
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    folders = []
    for root in spec.submodule_search_locations:
        folders += sorted(str(p) for p in Path(root).glob("*/include") if any(p.glob("cu*.h")))
    return folders


def cuda_requested() -> bool | None:
    """FASTCAE_CUDA: "1" forces the CUDA build, "0" skips it, unset means auto."""
    value = os.environ.get("FASTCAE_CUDA", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"FASTCAE_CUDA must be 0, 1 or unset, got {value!r}")


requested = cuda_requested()
cuda_home = find_cuda_home() if requested is not False else None
if cuda_home and not os.environ.get("CUDA_HOME"):
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402  (CUDA_HOME must be set first)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

torch_has_cuda = torch.version.cuda is not None
with_cuda = requested is not False and cuda_home is not None and torch_has_cuda
if requested is True and not with_cuda:
    reason = "no CUDA toolkit was found (set CUDA_HOME)" if cuda_home is None else "torch is a CPU-only build"
    raise SystemExit(f"FASTCAE_CUDA=1 but the CUDA kernels cannot be built: {reason}")
if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS

cxx_flags = [
    "-O3",
    # IEEE semantics stay (NaN/Inf propagate); these only let the math vectorize.
    "-fno-math-errno",
    "-fno-trapping-math",
]
# at::parallel_for is a header template around `#pragma omp parallel`: without
# -fopenmp it silently runs on one thread. The extension then shares the
# libgomp that torch has already loaded (same soname).
if sys.platform.startswith("linux"):
    cxx_flags.append("-fopenmp")
    link_flags = ["-fopenmp"]
else:
    cxx_flags.append("-fopenmp-simd")
    link_flags = []
nvcc_flags = ["-O3", "-lineinfo"]
define_macros = []
# Per op: csrc/<op>.cpp (schemas), csrc/common/<op>_common.cpp, csrc/cpu/<op>_cpu.cpp,
# csrc/cuda/<op>_cuda.cu (CUDA builds only).
sources = [
    str(p.relative_to(ROOT))
    for folder in ("", "common", "cpu")
    for p in sorted((ROOT / "csrc" / folder).glob("*.cpp"))
]
if with_cuda:
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
    # Commas instead of ';' or spaces: the value travels through a shell command
    # line. Only the C++ compiler sees it: nvcc would split -D values at commas.
    archs = ",".join(os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(";", " ").split())
    define_macros.append(("WITH_CUDA", None))
    cxx_flags.append(f"-DFASTCAE_CUDA_ARCHS={archs}")
    for folder in library_headers_fallback(cuda_home):
        nvcc_flags += ["-isystem", folder]
    extension_type = CUDAExtension
else:
    extension_type = CppExtension

print(
    f"fastcae: building the extension {'with' if with_cuda else 'without'} CUDA"
    + (f" (CUDA_HOME={cuda_home}, archs {os.environ.get('TORCH_CUDA_ARCH_LIST')})" if with_cuda else "")
)

extension = extension_type(
    name="fastcae._C",
    sources=sources,
    include_dirs=[str(ROOT / "csrc" / "include")],
    define_macros=define_macros,
    extra_link_args=link_flags,
    extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags} if with_cuda else {"cxx": cxx_flags},
)

# pyproject.toml lists the license as dynamic: `project.license = "MIT"` (an SPDX
# expression) needs setuptools >= 77, and the older table form warns from 77 on.
# setuptools >= 77 writes the expression (License-Expression), older ones the
# free-text License field. LICENSE is picked up as the license file by both.
if int(setuptools.__version__.split(".")[0]) >= 77:
    license_metadata = {"license_expression": "MIT"}
else:
    license_metadata = {"license": "MIT"}

setup(
    **license_metadata,
    packages=["fastcae", "fastcae.ops", "fastcae.kernels"],
    package_dir={"fastcae": "fastcae", "fastcae.kernels": "kernels"},
    ext_modules=[extension],
    # BuildExtension uses ninja by default. Not BuildExtension.with_options(use_ninja=True):
    # setuptools 77.0.3 rejects the keyword ("Command.__init__() got an unexpected
    # keyword argument 'use_ninja'", pypa/setuptools#4908).
    cmdclass={"build_ext": BuildExtension},
)
