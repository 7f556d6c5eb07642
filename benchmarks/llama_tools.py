"""llama.cpp's own tools (llama-server), built for comparison from the sources llama-cpp-python vendors.

A yardstick only, never a dependency of ossrun: the sdist of the installed llama-cpp-python is
downloaded from PyPI, its ``vendor/llama.cpp`` built with CMake in a cache folder, and the
binary reused by later runs.

On x86 the build leaves out llama.cpp's AMX kernels, as ossrun does at run time (they crash on
hosts that report AMX; see ``ossrun.engine.ggml``): both then place the weights the same way.

    python benchmarks/llama_tools.py --cache ~/ossrun-bench/llama-tools   # builds llama-server, prints its path
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

DEFAULT_CACHE = Path.home() / "ossrun-bench" / "llama-tools"
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def llama_cpp_version() -> str:
    import llama_cpp

    return llama_cpp.__version__


def sources(cache: Path, version: str) -> Path:
    folder = cache / f"llama-cpp-python-{version}"
    source = folder / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").exists():
        return source
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={version}",
            "-d",
            str(cache),
        ],
        check=True,
        capture_output=True,
    )
    (archive,) = cache.glob(f"llama_cpp_python-{version}.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(cache, filter="data")
    (cache / f"llama_cpp_python-{version}").rename(folder)
    return source


def llama_server(cache: Path = DEFAULT_CACHE) -> Path:
    """The path of a llama-server built from the vendored llama.cpp (built once, then cached)."""
    version = llama_cpp_version()
    build = cache / f"build-{version}"
    binary = build / "bin" / "llama-server"
    if binary.exists():
        return binary
    source = sources(cache, version)
    flags = [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"] if platform.machine() in ("x86_64", "AMD64") else []
    subprocess.run(
        [
            "cmake",
            "-S",
            str(source),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=ON",
            "-DGGML_NATIVE=ON",
            *flags,
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j", "2"], check=True, capture_output=True)
    return binary


def wait_until_healthy(server: subprocess.Popen, port: int, timeout: float = 900) -> bool:
    """Whether ``server`` (llama-server on 127.0.0.1:``port``) answers /health before ``timeout``
    seconds pass or it exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return True
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    print(llama_server(parser.parse_args().cache))


if __name__ == "__main__":
    main()
