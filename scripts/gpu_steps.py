"""The steps scripts/gpu_check.py runs as its phases' subprocesses (each usable alone):

    python scripts/gpu_steps.py env                      # environment report (no build needed)
    python scripts/gpu_steps.py build --build-dir DIR    # the extension with its CUDA kernels, into DIR/lib
    python scripts/gpu_steps.py backends [ARCH ...]      # after installing the build: cubins, backends()
    python scripts/gpu_steps.py sanitize                 # memcheck and racecheck at once on the driver below
    python scripts/gpu_steps.py sanitize-driver          # small forward + backward calls of each GPU backend

The build goes to a folder of its own (not into fastcae/), so the test phase that
runs meanwhile imports one consistent fastcae; the orchestrator installs the
built module when that phase is over.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _output(command: list[str], timeout: float = 20) -> str:
    """stdout+stderr of a command, or why it could not run."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({command[0]}: {type(exc).__name__}: {exc})"
    return (done.stdout + done.stderr).strip() or f"(no output, exit {done.returncode})"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def find_compute_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    roots = [
        os.environ.get("CUDA_HOME", ""),
        "/usr/local/cuda",
        *sorted(glob.glob("/usr/local/cuda-*"), reverse=True),
    ]
    for root in roots:
        candidate = Path(root) / "bin" / "compute-sanitizer"
        if root and candidate.exists():
            return str(candidate)
    return None


def ninja_available() -> bool:
    from torch.utils.cpp_extension import is_ninja_available

    return is_ninja_available()


# --- env ----------------------------------------------------------------------------------------


def env_report() -> int:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"date: {now}; host {platform.node()}, {os.cpu_count()} CPUs, {memory:.0f} GiB RAM")
    print(f"git commit: {_output(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'])}")
    print("nvidia-smi -L:\n  " + _output(["nvidia-smi", "-L"]).replace("\n", "\n  "))
    query = "name,driver_version,compute_cap,memory.total,clocks.max.sm,power.limit"
    print(
        "nvidia-smi:\n  "
        + _output(["nvidia-smi", f"--query-gpu={query}", "--format=csv"]).replace("\n", "\n  ")
    )
    print(f"python {platform.python_version()} ({sys.executable})")
    import torch

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})")
    names = [
        "triton",
        "numpy",
        "setuptools",
        "ninja",
        "pytest",
        "pytest-xdist",
        "pytest-timeout",
        "pytest-benchmark",
    ]
    print("packages: " + ", ".join(f"{name} {_version(name)}" for name in [*names, "hypothesis"]))
    nvcc = shutil.which("nvcc") or str(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc")
    print(f"nvcc: {_output([nvcc, '--version']).splitlines()[-1]}")
    print(f"ninja for the build: {'yes' if ninja_available() else 'no (parallel compile by a process pool)'}")
    sanitizer = find_compute_sanitizer()
    version = _output([sanitizer, "--version"]).splitlines()[-1] if sanitizer else ""
    print(f"compute-sanitizer: {sanitizer or 'not found'} {version}")
    print(f"CUDA available: {torch.cuda.is_available()}, {torch.cuda.device_count()} device(s)")
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        optin = getattr(props, "shared_memory_per_block_optin", 0) // 1024
        print(
            f"  cuda:{index}: {props.name}, sm_{props.major}{props.minor}, "
            f"{props.multi_processor_count} SMs, "
            f"{props.total_memory / 2**30:.0f} GiB, {optin} KiB shared memory per block (opt-in)"
        )
    from fastcae._precision import cuda_fp32_uses_tf32

    print(
        f"float32 matmuls on CUDA: {'TF32' if cuda_fp32_uses_tf32() else 'IEEE float32'} (PyTorch's setting)"
    )
    keys = [
        "CUDA_HOME",
        "TORCH_CUDA_ARCH_LIST",
        "MAX_JOBS",
        "TRITON_CACHE_DIR",
        "TORCHINDUCTOR_CACHE_DIR",
        "PYTHONPATH",
    ]
    print("environment: " + ", ".join(f"{key}={os.environ.get(key, '')}" for key in keys))
    import fastcae

    print("fastcae.backends() before the build: " + _backends_line(fastcae.backends()))
    return 0


def _backends_line(listing: dict[str, str | None]) -> str:
    return "; ".join(
        f"{name}: {'available' if reason is None else reason}" for name, reason in listing.items()
    )


# --- build --------------------------------------------------------------------------------------


def _forked(items: list, jobs: int, work) -> list:
    """Run work(item) for each item in forked children, at most ``jobs`` at a time; the failed items."""
    pending, running, failed = list(items), {}, []
    while pending or running:
        while pending and len(running) < jobs:
            item = pending.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # child
                code = 0
                try:
                    work(item)
                except BaseException as exc:
                    print(f"build: {item}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    code = 1
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            running[pid] = item
        pid, status = os.wait()
        if os.waitstatus_to_exitcode(status) != 0:
            failed.append(running[pid])
        del running[pid]
    return failed


def _parallel_compile(jobs: int) -> None:
    """Without ninja, torch's BuildExtension compiles one source after another; compile them
    in forked processes instead (each child has its own copy of the compiler object, whose
    executable torch swaps between g++ and nvcc per source)."""
    import importlib

    import setuptools  # noqa: F401  (first: it makes distutils its own copy, the one setup.py builds with)

    ccompiler = importlib.import_module("distutils.ccompiler")
    compile_error = importlib.import_module("distutils.errors").CompileError

    def compile(  # the body of distutils' CCompiler.compile, with the loop forked
        self,
        sources,
        output_dir=None,
        macros=None,
        include_dirs=None,
        debug=0,
        extra_preargs=None,
        extra_postargs=None,
        depends=None,
    ):
        macros, objects, extra_postargs, pp_opts, build = self._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs
        )
        cc_args = self._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj: str) -> None:
            src, ext = build[obj]
            self._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        failed = _forked([obj for obj in objects if obj in build], jobs, one)
        if failed:
            raise compile_error(f"failed to compile {failed}")
        return objects

    ccompiler.CCompiler.compile = compile


def build(build_dir: Path) -> int:
    """setup.py build_ext into build_dir/lib (objects in build_dir/temp, reused by a rerun)."""
    import runpy

    os.chdir(ROOT)
    os.environ.setdefault("FASTCAE_CUDA", "1")
    jobs = int(os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1)))
    print(
        f"build: FASTCAE_CUDA={os.environ['FASTCAE_CUDA']} MAX_JOBS={jobs} "
        f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch detects)')}",
        flush=True,
    )
    if not ninja_available():
        print("build: ninja not found; compiling the sources in a pool of processes", flush=True)
        _parallel_compile(jobs)
    sys.argv = [
        "setup.py",
        "build_ext",
        "--build-lib",
        str(build_dir / "lib"),
        "--build-temp",
        str(build_dir / "temp"),
    ]
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    built = sorted((build_dir / "lib" / "fastcae").glob("_C*.so"))
    print(f"build: done: {[str(p) for p in built]}", flush=True)
    return 0 if built else 1


# --- backends -----------------------------------------------------------------------------------


def backends(archs: list[str]) -> int:
    import torch

    if not archs and torch.cuda.is_available():  # the cubin the build was made for: the local GPU's
        major, minor = torch.cuda.get_device_capability()
        archs = [f"{major}.{minor}"]
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_cuda_build.py"), *archs],
        capture_output=True,
        text=True,
    )
    print("check_cuda_build.py:\n  " + (check.stdout + check.stderr).strip().replace("\n", "\n  "))
    import fastcae

    print("fastcae.backends() after the build: " + _backends_line(fastcae.backends()))
    return check.returncode


# --- compute-sanitizer ----------------------------------------------------------------------------


def sanitize_driver() -> int:
    """Small forward + backward calls of every GPU backend (and the fused CAE+H op), float32 and
    bf16, shapes the test suite compiles already; every call checked for finite results."""
    import torch

    import fastcae
    from fastcae.dispatch import BACKENDS

    names = [
        name
        for name in ("torch", "triton", "cuda")
        if fastcae.backends()[name] is None
        and (BACKENDS[name].device_types is None or "cuda" in BACKENDS[name].device_types)
    ]
    print(f"driver: backends {names}", flush=True)
    failures = 0
    cases = [((17, 33, 15), torch.float32), ((64, 100, 130), torch.bfloat16)]
    for name in names:
        for (batch, features, hidden), dtype in cases:
            gen = torch.Generator(device="cuda").manual_seed(0)

            def tensor(*shape, scale=1.0, gen=gen, dtype=dtype):
                values = torch.randn(*shape, generator=gen, device="cuda") * scale
                return values.to(dtype).requires_grad_()

            x, weight = tensor(batch, features), tensor(hidden, features, scale=features**-0.5)
            bias = tensor(hidden, scale=0.5)
            label = f"{name} ({batch}, {features}, {hidden}) {str(dtype).removeprefix('torch.')}"
            try:
                code, penalty = fastcae.encode(x, weight, bias, backend=name)
                (code.float().sum() + penalty.sum()).backward()
                results = [code, penalty, x.grad, weight.grad, bias.grad]
                if dtype == torch.float32:
                    hessian = fastcae.penalty_hessian(x, weight, bias, n_samples=2, backend=name)
                    hessian.backward()
                    results.append(hessian)
                torch.cuda.synchronize()
                finite = all(bool(torch.isfinite(t).all()) for t in results)
                print(f"driver: {label}: forward + backward {'ok' if finite else 'NOT finite'}", flush=True)
                failures += not finite
            except Exception as exc:  # keep going: the other calls still get checked
                print(f"driver: {label}: FAILED {type(exc).__name__}: {exc}", flush=True)
                failures += 1
    print(f"driver: done, {failures} failure(s)", flush=True)
    return 1 if failures else 0


def _relay(stream, prefix: str) -> None:
    for line in iter(stream.readline, ""):
        print(prefix + line.rstrip("\n"), flush=True)


def sanitize() -> int:
    """memcheck (exact allocations: PyTorch's caching allocator off) and racecheck at once."""
    tool = find_compute_sanitizer()
    if tool is None:
        print("compute-sanitizer not found (PATH, CUDA_HOME/bin, /usr/local/cuda*/bin)")
        return 1
    driver = [sys.executable, str(Path(__file__).resolve()), "sanitize-driver"]
    common = ["--error-exitcode", "99", "--print-limit", "50", "--target-processes", "all"]
    env = dict(os.environ, FASTCAE_TRITON_AUTOTUNE="0", FASTCAE_AUTOTUNE="0", PYTHONUNBUFFERED="1")
    runs = {
        "memcheck": (
            [tool, "--tool", "memcheck", "--report-api-errors", "no", *common, *driver],
            dict(env, PYTORCH_NO_CUDA_MEMORY_CACHING="1"),
        ),
        "racecheck": ([tool, "--tool", "racecheck", *common, *driver], env),
    }
    processes, relays = {}, []
    for name, (command, run_env) in runs.items():
        print(f"[{name}] {' '.join(command)}", flush=True)
        process = subprocess.Popen(
            command, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        processes[name] = process
        relay = threading.Thread(target=_relay, args=(process.stdout, f"[{name}] "), daemon=True)
        relay.start()
        relays.append(relay)
    codes = {name: process.wait() for name, process in processes.items()}
    for relay in relays:
        relay.join(timeout=5)
    for name, code in codes.items():
        verdict = "clean" if code == 0 else ("ERRORS FOUND" if code == 99 else f"exit {code}")
        print(f"[{name}] result: {verdict}", flush=True)
    return 0 if all(code == 0 for code in codes.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("env")
    build_parser = sub.add_parser("build")
    build_parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "gpu-check")
    backends_parser = sub.add_parser("backends")
    backends_parser.add_argument("archs", nargs="*")
    sub.add_parser("sanitize")
    sub.add_parser("sanitize-driver")
    args = parser.parse_args(argv)
    if args.step == "env":
        return env_report()
    if args.step == "build":
        return build(args.build_dir.resolve())
    if args.step == "backends":
        return backends(args.archs)
    if args.step == "sanitize":
        return sanitize()
    return sanitize_driver()


if __name__ == "__main__":
    sys.exit(main())
