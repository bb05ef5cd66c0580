"""Emit the Relax VM's functions sorted by name, not in IRModule map order.

`CodeGenVM::Run` iterates `mod->functions`, whose order follows object addresses, and so fixes
the order of the VM executable's function table and bytecode: lib.wasm differed on every run.
Measured on the real compiler: with this patch and 02 the wasm is byte-identical across runs.
"""

FILE = "src/relax/backend/vm/codegen_vm.cc"

EDITS = (
    (
        "#include <string>\n#include <unordered_map>\n#include <vector>\n",
        "#include <algorithm>\n#include <string>\n#include <unordered_map>\n#include <utility>\n"
        "#include <vector>\n",
    ),
    (
        "    for (const auto& [gvar, f] : mod->functions) {\n"
        "      if (auto* func = f.as<FunctionNode>()) {\n"
        "        codegen.Codegen(GetRef<Function>(func));\n"
        "        res_mod->Remove(gvar);\n"
        "      }\n"
        "    }\n",
        "    // webslm-determinism: emit functions sorted by name, not in address-dependent order.\n"
        "    std::vector<std::pair<GlobalVar, BaseFunc>> ordered(mod->functions.begin(),\n"
        "                                                        mod->functions.end());\n"
        "    std::sort(ordered.begin(), ordered.end(), [](const auto& lhs, const auto& rhs) {\n"
        "      return std::string(lhs.first->name_hint) < std::string(rhs.first->name_hint);\n"
        "    });\n"
        "    for (const auto& [gvar, f] : ordered) {\n"
        "      if (auto* func = f.as<FunctionNode>()) {\n"
        "        codegen.Codegen(GetRef<Function>(func));\n"
        "        res_mod->Remove(gvar);\n"
        "      }\n"
        "    }\n",
    ),
)
