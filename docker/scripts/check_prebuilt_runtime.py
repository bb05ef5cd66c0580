#!/usr/bin/env python3
"""Prove that linking the prebuilt runtime objects writes the very wasm the runtime bitcode wrote.

emcc compiles every bitcode input of a link on its own (clang -c, the link's -O3) before wasm-ld
runs, so the image compiles the web runtimes to objects once, with those same flags
(patches/03_emcc_prebuilt_runtime.py links them). This script links model objects through TVM's
own `create_tvmjs_wasm` twice: as `compile` does (with the prebuilt objects beside the bitcode),
and with a folder holding the bitcode only (what unpatched TVM links), then requires the same
bytes and prints both links' times.

usage: check_prebuilt_runtime.py [MODEL_OBJECT...]   (default: a one-function bitcode object)
needs MLC_LLM_SOURCE_DIR, TVM's runtime bitcode and objects where TVM finds them, emcc on PATH;
exit 0 identical, 1 the two links differ
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tvm._ffi.libinfo import find_lib_path
from tvm.contrib import emcc

TVM_RUNTIMES = ("wasm_runtime.bc", "tvmjs_support.bc", "webgpu_runtime.bc")
MODEL_SOURCE = 'extern "C" int TVMFuncFree(void*);\n' \
               'extern "C" int webslm_check(void* handle) { return TVMFuncFree(handle); }\n'


def timed_link(output: Path, objects: list[str], runtime: Path) -> str:
    """Link through create_tvmjs_wasm; return a line with its wall and CPU seconds and digest."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    emcc.create_tvmjs_wasm(str(output), objects, libs=[str(runtime)])
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    return f"wall {wall:.1f} s, cpu {cpu:.1f} s, {output.stat().st_size} bytes, sha256 {digest}"


def bitcode_only(scratch: Path, runtime: Path) -> Path:
    """A folder with links to the runtimes' bitcode and no objects; returns MLC's runtime there."""
    scratch.mkdir()
    for name in TVM_RUNTIMES:
        (scratch / name).symlink_to(find_lib_path(name)[0])
    (scratch / runtime.name).symlink_to(runtime)
    return scratch / runtime.name


def main(argv: list[str]) -> int:
    runtime = Path(os.environ["MLC_LLM_SOURCE_DIR"]) / "web/dist/wasm/mlc_wasm_runtime.bc"
    with tempfile.TemporaryDirectory(prefix="check-prebuilt-") as scratch_dir:
        scratch = Path(scratch_dir)
        objects = argv[1:]
        if not objects:
            source = scratch / "model.cc"
            source.write_text(MODEL_SOURCE)
            objects = [str(scratch / "model.bc")]
            subprocess.run(["emcc", "-O3", "-emit-llvm", "-c", str(source), "-o", objects[0]],
                           check=True)
        prebuilt = scratch / "prebuilt.wasm"
        print(f"prebuilt runtime objects: {timed_link(prebuilt, objects, runtime)}", flush=True)
        bitcode_runtime = bitcode_only(scratch / "bitcode", runtime)
        os.environ["TVM_LIBRARY_PATH"] = str(bitcode_runtime.parent)
        bitcode = scratch / "bitcode.wasm"
        print(f"runtime bitcode:          {timed_link(bitcode, objects, bitcode_runtime)}",
              flush=True)
        if prebuilt.read_bytes() != bitcode.read_bytes():
            sys.stderr.write("check_prebuilt_runtime: the prebuilt runtime objects link to another "
                             "wasm than the bitcode; rebuild them with the link's flags\n")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
