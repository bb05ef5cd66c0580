"""Serialize the WebGPU module's function and shader maps name-ordered.

`WebGPUSourceModuleNode::SaveToBinary` wrote `fmap_` and `smap_` (std::unordered_map) in hash
order. A dmlc std::map has the same byte format (size, then key/value pairs), so writing ordered
copies changes only the order of the entries, which is what makes lib.wasm reproducible.
"""

FILE = "src/target/source/codegen_webgpu.cc"

EDITS = (
    (
        "  void SaveToBinary(dmlc::Stream* stream) final {\n"
        "    stream->Write(fmap_);\n"
        "    stream->Write(smap_);\n"
        "  }\n",
        "  void SaveToBinary(dmlc::Stream* stream) final {\n"
        "    // webslm-determinism: name-ordered maps (same dmlc byte format, sorted entries).\n"
        "    stream->Write(std::map<std::string, runtime::FunctionInfo>(fmap_.begin(), fmap_.end()));\n"
        "    stream->Write(std::map<std::string, std::string>(smap_.begin(), smap_.end()));\n"
        "  }\n",
    ),
)
