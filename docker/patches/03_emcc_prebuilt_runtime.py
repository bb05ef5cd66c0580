"""Link the web runtimes' prebuilt wasm objects instead of their bitcode.

`create_tvmjs_wasm` hands emcc the runtime bitcode (wasm_runtime.bc, tvmjs_support.bc,
webgpu_runtime.bc and MLC's mlc_wasm_runtime.bc). emcc compiles each bitcode input of a link to a
wasm object on its own (clang -c at the link's -O3) before wasm-ld runs, so every model's link
compiled the whole TVM runtime again, the same each time. The image compiles each runtime once,
with those flags, to an object beside its bitcode (X.o next to X.bc); the patched link takes that
object where it exists and leaves the model's own objects as they are. The wasm is the same bytes
(docker/scripts/check_prebuilt_runtime.py proves it when the image is built).
"""

FILE = "python/tvm/contrib/emcc.py"

EDITS = (
    (
        'def create_tvmjs_wasm(output, objects, options=None, cc="emcc", libs=None):\n',
        "def _prebuilt_runtime(lib):\n"
        '    """webslm-prebuilt-runtime: the wasm object compiled from a runtime\'s bitcode at\n'
        "    image build time (X.o beside X.bc), else the bitcode itself.\"\"\"\n"
        '    prebuilt = os.path.splitext(lib)[0] + ".o"\n'
        '    return prebuilt if lib.endswith(".bc") and os.path.isfile(prebuilt) else lib\n'
        "\n"
        "\n"
        'def create_tvmjs_wasm(output, objects, options=None, cc="emcc", libs=None):\n',
    ),
    (
        "    # let libraries go before normal object\n"
        "    cmd += all_libs + objects\n",
        "    # let libraries go before normal object\n"
        "    # webslm-prebuilt-runtime: the runtimes' objects compiled once in the image, not bitcode\n"
        "    cmd += [_prebuilt_runtime(lib) for lib in all_libs] + objects\n",
    ),
)
