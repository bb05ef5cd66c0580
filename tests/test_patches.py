"""The determinism patches and their script, applied to copies of the anchored TVM code.

The fixtures below are the exact regions of apache/tvm (at the commit the pinned relax fork
tracks) that the patches anchor on, inside enough surrounding text to show the anchors must be
found in place, not merely somewhere.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "docker" / "scripts" / "apply_patches.py"
PATCHES = REPO / "docker" / "patches"

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
    return tree


def _apply(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(PATCHES), str(tree)],
                          capture_output=True, text=True, check=False)


def test_patches_apply_once_and_sort_by_name(tvm_tree: Path) -> None:
    result = _apply(tvm_tree)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": applied") == 3
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
    files = sorted(tvm_tree.rglob("*.cc"))
    once = [f.read_bytes() for f in files]
    again = _apply(tvm_tree)
    assert again.returncode == 0
    assert again.stdout.count("already applied") == 3
    assert [f.read_bytes() for f in files] == once


@pytest.mark.parametrize(("relative", "old", "new"), [
    ("src/relax/backend/vm/codegen_vm.cc", "mod->functions) {", "mod->functions()) {"),
    ("src/target/source/codegen_webgpu.cc", "stream->Write(smap_);", "stream->Write(smap);"),
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
