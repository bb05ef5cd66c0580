#!/usr/bin/env python3
"""Fill emscripten's cache (EM_CACHE) with every system library a WebGPU model library links.

Links one trivial object through TVM's own `create_tvmjs_wasm` (the function `mlc_llm compile
--device webgpu` links with) and MLC-LLM's bitcode runtime, so emcc builds exactly the libraries
(libc, libc++, ... in the variants those flags select) that compile needs. Run again with
EM_FROZEN_CACHE=1 it proves nothing is missing: a frozen cache refuses to build anything.

usage: warm_emscripten_cache.py     (needs MLC_LLM_SOURCE_DIR, TVM_HOME, emcc on PATH)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tvm.contrib import emcc


def main() -> int:
    runtime = Path(os.environ["MLC_LLM_SOURCE_DIR"]) / "web/dist/wasm/mlc_wasm_runtime.bc"
    with tempfile.TemporaryDirectory(prefix="warm-emcc-") as scratch:
        source, obj = Path(scratch) / "warm.cc", Path(scratch) / "warm.o"
        source.write_text('extern "C" int webslm_warm_up() { return 0; }\n')
        subprocess.run(["emcc", "-O3", "-std=c++17", "-c", str(source), "-o", str(obj)],
                       check=True)
        emcc.create_tvmjs_wasm(str(Path(scratch) / "warm.wasm"), [str(obj)],
                               libs=[str(runtime)])
    print(f"emscripten cache ready: {os.environ['EM_CACHE']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
