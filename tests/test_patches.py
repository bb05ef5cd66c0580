"""The TVM patches and their script, applied to copies of the anchored TVM code.

The C++ fixtures below are the exact regions of apache/tvm (at the commit the pinned relax fork
tracks) that the determinism patches anchor on, inside enough surrounding text to show the anchors
must be found in place, not merely somewhere; the link patch is applied to that commit's whole
python/tvm/contrib/emcc.py, whose create_tvmjs_wasm then runs against a recording stand-in emcc.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "docker" / "scripts" / "apply_patches.py"
PATCHES = REPO / "docker" / "patches"
TVM_EMCC = REPO / "tests" / "fixtures" / "tvm-3eb5ad67" / "emcc.py.orig"
EMCC_PY = "python/tvm/contrib/emcc.py"
# The runtimes create_tvmjs_wasm finds through TVM's library path, and MLC's, passed as `libs`.
TVM_RUNTIMES = ("wasm_runtime", "tvmjs_support", "webgpu_runtime")
MLC_RUNTIME = "mlc_wasm_runtime"
APPLIED_EDITS = 5

CODEGEN_VM = """\
#include <tvm/relax/exec_builder.h>
#include <tvm/tir/function.h>

#include <string>
#include <unordered_map>
#include <vector>

namespace tvm {
class CodeGenVM : public ExprFunctor<Instruction::Arg(const Expr&)> {
 public:
  static IRModule Run(relax::ExecBuilder builder, IRModule mod) {
    IRModule res_mod = mod;
    res_mod.CopyOnWrite();
    CodeGenVM codegen(builder, mod);
    // Remove relax function and turn into TIR func.
    for (const auto& [gvar, f] : mod->functions) {
      if (auto* func = f.as<FunctionNode>()) {
        codegen.Codegen(GetRef<Function>(func));
        res_mod->Remove(gvar);
      }
    }
    return res_mod;
  }
};
}  // namespace tvm
"""

CODEGEN_WEBGPU = """\
class WebGPUSourceModuleNode final : public runtime::ModuleNode {
 public:
  PackedFunc GetFunction(const String& name, const ObjectPtr<Object>& sptr_to_self) final {
    LOG(FATAL) << "WebGPUSourceModule is not directly runnable, export and run through tvmjs";
    return PackedFunc(nullptr);
  }

  void SaveToBinary(dmlc::Stream* stream) final {
    stream->Write(fmap_);
    stream->Write(smap_);
  }
};
"""


@pytest.fixture()
def tvm_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tvm"
    (tree / "src/relax/backend/vm").mkdir(parents=True)
    (tree / "src/target/source").mkdir(parents=True)
    (tree / "src/relax/backend/vm/codegen_vm.cc").write_text(CODEGEN_VM)
    (tree / "src/target/source/codegen_webgpu.cc").write_text(CODEGEN_WEBGPU)
    (tree / EMCC_PY).parent.mkdir(parents=True)
    (tree / EMCC_PY).write_bytes(TVM_EMCC.read_bytes())
    return tree


def _apply(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(PATCHES), str(tree)],
                          capture_output=True, text=True, check=False)


def test_patches_apply_once_and_sort_by_name(tvm_tree: Path) -> None:
    result = _apply(tvm_tree)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": applied") == APPLIED_EDITS
    vm = (tvm_tree / "src/relax/backend/vm/codegen_vm.cc").read_text()
    assert "for (const auto& [gvar, f] : mod->functions)" not in vm
    assert "for (const auto& [gvar, f] : ordered)" in vm
    assert "name_hint" in vm and "std::sort" in vm and "#include <algorithm>" in vm
    assert vm.count("codegen.Codegen(GetRef<Function>(func));") == 1
    webgpu = (tvm_tree / "src/target/source/codegen_webgpu.cc").read_text()
    assert "stream->Write(fmap_);" not in webgpu and "stream->Write(smap_);" not in webgpu
    assert "std::map<std::string, runtime::FunctionInfo>(fmap_.begin(), fmap_.end())" in webgpu
    assert "std::map<std::string, std::string>(smap_.begin(), smap_.end())" in webgpu
    assert webgpu.index("fmap_.begin()") < webgpu.index("smap_.begin()")  # same field order


def test_patches_are_idempotent(tvm_tree: Path) -> None:
    assert _apply(tvm_tree).returncode == 0
    files = sorted([*tvm_tree.rglob("*.cc"), *tvm_tree.rglob("*.py")])
    once = [f.read_bytes() for f in files]
    again = _apply(tvm_tree)
    assert again.returncode == 0
    assert again.stdout.count("already applied") == APPLIED_EDITS
    assert [f.read_bytes() for f in files] == once


@pytest.mark.parametrize(("relative", "old", "new"), [
    ("src/relax/backend/vm/codegen_vm.cc", "mod->functions) {", "mod->functions()) {"),
    ("src/target/source/codegen_webgpu.cc", "stream->Write(smap_);", "stream->Write(smap);"),
    (EMCC_PY, "cmd += all_libs + objects", "cmd += objects + all_libs"),
])
def test_a_tree_without_an_anchor_fails_loudly(tvm_tree: Path, relative: str, old: str,
                                               new: str) -> None:
    target = tvm_tree / relative
    target.write_text(target.read_text().replace(old, new))
    result = _apply(tvm_tree)
    assert result.returncode == 1
    assert "anchor found 0 times" in result.stderr and "pinned TVM tree differs" in result.stderr


def test_a_tree_missing_a_patched_file_fails(tvm_tree: Path) -> None:
    (tvm_tree / "src/target/source/codegen_webgpu.cc").unlink()
    result = _apply(tvm_tree)
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_an_anchor_found_twice_is_refused(tvm_tree: Path) -> None:
    target = tvm_tree / "src/target/source/codegen_webgpu.cc"
    target.write_text(CODEGEN_WEBGPU + CODEGEN_WEBGPU)
    result = _apply(tvm_tree)
    assert result.returncode == 1 and "found 2 times" in result.stderr



# A stand-in emcc: logs each command line beside itself (a JSON list a line) and writes as its
# output its inputs' bytes joined, so two links of inputs with equal bytes write equal outputs.
STANDIN_EMCC = """\
import json, sys
from pathlib import Path
args = sys.argv[1:]
out = args[args.index("-o") + 1]
inputs = [Path(a) for a in args if a != out and a.endswith((".cc", ".bc", ".o"))]
Path(out).write_bytes(b"|".join(path.read_bytes() for path in inputs))
with open(Path(sys.argv[0]).with_name("emcc-calls.jsonl"), "a") as log:
    log.write(json.dumps(args) + "\\n")
"""

# The two parts of tvm._ffi that emcc.py imports; TVM looks in TVM_LIBRARY_PATH first.
TVM_FFI = {
    "tvm/__init__.py": "",
    "tvm/contrib/__init__.py": "",
    "tvm/_ffi/__init__.py": "",
    "tvm/_ffi/base.py": "def py_str(data):\n    return data.decode()\n",
    "tvm/_ffi/libinfo.py": "import os\n\n\ndef find_lib_path(name):\n"
                           "    return [os.path.join(os.environ['TVM_LIBRARY_PATH'], name)]\n",
}
LINK = ("import sys; from tvm.contrib import emcc; "
        "emcc.create_tvmjs_wasm(sys.argv[1], sys.argv[2:4], libs=[sys.argv[4]])")


def _toolchain(tree: Path, work: Path, objects: str | None) -> dict[str, str]:
    """Stand-ins for what compile's link finds, in `work`: TVM's package with `tree`'s emcc.py,
    the TVM runtimes' bitcode in runtimes/ and MLC's in mlc/web/dist/wasm/ (each runtime's bytes
    "<name> code"), prebuilt objects beside them holding "<name> <objects>" unless `objects` is
    None, and emcc; returns the environment a link runs in."""
    folders = {work / "runtimes": TVM_RUNTIMES, work / "mlc/web/dist/wasm": (MLC_RUNTIME,)}
    for folder, names in folders.items():
        folder.mkdir(parents=True)
        for name in names:
            (folder / f"{name}.bc").write_text(f"{name} code")
            if objects is not None:
                (folder / f"{name}.o").write_text(f"{name} {objects}")
    package = work / "package"
    for relative, text in {**TVM_FFI, "tvm/contrib/emcc.py": (tree / EMCC_PY).read_text()}.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    emcc = work / "bin" / "emcc"
    emcc.parent.mkdir()
    emcc.write_text(f"#!{sys.executable}\n{STANDIN_EMCC}")
    emcc.chmod(0o755)
    return {"PYTHONPATH": str(package), "TVM_LIBRARY_PATH": str(work / "runtimes"),
            "MLC_LLM_SOURCE_DIR": str(work / "mlc"), "PATH": f"{emcc.parent}:/usr/bin:/bin"}


def _emcc_calls(work: Path) -> list[list[str]]:
    log = work / "bin" / "emcc-calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()]


def _link_command(tree: Path, work: Path, prebuilt: bool) -> list[str]:
    """The emcc command line `create_tvmjs_wasm` of `tree` runs for a model's two objects, with
    the runtimes' bitcode in `work` (and their prebuilt objects beside it when `prebuilt`)."""
    env = _toolchain(tree, work, "code" if prebuilt else None)
    for name in ("lib0.bc", "devc.bc"):
        (work / name).write_text(name)
    subprocess.run([sys.executable, "-c", LINK, str(work / "out.wasm"), str(work / "lib0.bc"),
                    str(work / "devc.bc"), f"{env['MLC_LLM_SOURCE_DIR']}/web/dist/wasm/"
                    f"{MLC_RUNTIME}.bc"], env=env, check=True)
    [command] = _emcc_calls(work)
    return command


def _as_prebuilt(command: list[str], work: Path) -> list[str]:
    runtime = {str(work / "runtimes" / f"{name}.bc") for name in TVM_RUNTIMES}
    runtime.add(str(work / "mlc/web/dist/wasm" / f"{MLC_RUNTIME}.bc"))
    return [arg[:-len(".bc")] + ".o" if arg in runtime else arg for arg in command]


def test_the_patched_link_takes_the_prebuilt_runtime_objects(tvm_tree: Path,
                                                               tmp_path: Path) -> None:
    """compile's link names the runtimes' prebuilt objects where it named their bitcode, and
    nothing else changes: same flags, same order, the model's own objects still bitcode."""
    original = _link_command(tvm_tree, tmp_path / "original", prebuilt=True)
    assert _apply(tvm_tree).returncode == 0
    patched = _link_command(tvm_tree, tmp_path / "patched", prebuilt=True)
    runtimes = [tmp_path / "patched" / "runtimes" / name for name in TVM_RUNTIMES]
    for runtime in [*runtimes, tmp_path / "patched/mlc/web/dist/wasm" / MLC_RUNTIME]:
        assert f"{runtime}.o" in patched and f"{runtime}.bc" not in patched
    assert patched[-2:] == [str(tmp_path / "patched" / "lib0.bc"),
                            str(tmp_path / "patched" / "devc.bc")]
    expected = _as_prebuilt(original, tmp_path / "original")
    assert patched == [arg.replace(str(tmp_path / "original"), str(tmp_path / "patched"))
                       for arg in expected]
    assert patched[:2] == ["-O3", "-std=c++17"]


def test_without_prebuilt_objects_the_patched_link_is_the_original(tvm_tree: Path,
                                                                   tmp_path: Path) -> None:
    original = _link_command(tvm_tree, tmp_path / "original", prebuilt=False)
    assert _apply(tvm_tree).returncode == 0
    patched = _link_command(tvm_tree, tmp_path / "patched", prebuilt=False)
    assert patched == [arg.replace(str(tmp_path / "original"), str(tmp_path / "patched"))
                       for arg in original]


CHECK = REPO / "docker" / "scripts" / "check_prebuilt_runtime.py"


def _check(tvm_tree: Path, work: Path, objects: str) -> subprocess.CompletedProcess[str]:
    assert _apply(tvm_tree).returncode == 0
    env = _toolchain(tvm_tree, work, objects)
    return subprocess.run([sys.executable, str(CHECK)], env=env, capture_output=True, text=True,
                          check=False)


def test_the_image_check_links_once_with_the_objects_and_once_with_the_bitcode(
        tvm_tree: Path, tmp_path: Path) -> None:
    result = _check(tvm_tree, tmp_path, objects="code")
    assert result.returncode == 0, result.stderr
    assert "prebuilt runtime objects: wall" in result.stdout and "runtime bitcode:" in result.stdout
    compile_model, prebuilt, bitcode = _emcc_calls(tmp_path)
    assert "-emit-llvm" in compile_model and "-c" in compile_model
    runtimes = [arg for arg in prebuilt if Path(arg).stem in (*TVM_RUNTIMES, MLC_RUNTIME)]
    assert len(runtimes) == 4 and all(arg.endswith(".o") for arg in runtimes)
    runtimes = [arg for arg in bitcode if Path(arg).stem in (*TVM_RUNTIMES, MLC_RUNTIME)]
    assert len(runtimes) == 4 and all(arg.endswith(".bc") for arg in runtimes)
    assert prebuilt[-1] == bitcode[-1] and prebuilt[-1].endswith("model.bc")


def test_the_image_check_fails_when_the_objects_link_to_other_bytes(tvm_tree: Path,
                                                                    tmp_path: Path) -> None:
    result = _check(tvm_tree, tmp_path, objects="stale code")
    assert result.returncode == 1
    assert "link to another wasm than the bitcode" in result.stderr
