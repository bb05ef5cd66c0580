"""MLC-LLM's weight format: ndarray-cache.json, the params_shard_*.bin it indexes, and the
group quantization (q4f16_1, q4f32_1) the shards hold, read back into float arrays.

`webslm check` uses it to run the original model with the dist's own weights, so that a
difference left over is the compiler's or runtime's, not the quantization's.

What the files hold (MLC-LLM v0.19.0 convert_weight, read by TVM's web runtime):
- ndarray-cache.json: `records` = shards, each `{dataPath, nbytes, records: [param]}`, a param
  `{name, shape, dtype, format, nbytes, byteOffset}`.
- format `f32-to-bf16` with dtype float32: the bytes are bfloat16 (the high half of each float32);
  the runtime widens them back. For every other dtype the format changes nothing (bytes are raw).
- qNfM_1 group quantization, per linear/embedding weight W [out, in]: `<name>.q_weight` uint32
  [out, in/8] holds 8 four-bit values per word (element 8k+i in bits 4i..4i+3) and
  `<name>.q_scale` [out, in/32] one scale per group of 32 along `in`; W = (q - 7) * scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from webslm.errors import BadInput
from webslm.files import read_json
from webslm.layout import WEIGHTS_MANIFEST

BF16_IN_F32 = "f32-to-bf16"
QUANTIZED_WEIGHT = ".q_weight"
QUANTIZED_SCALE = ".q_scale"
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "uint32": np.uint32,
                "int32": np.int32, "int8": np.int8, "uint8": np.uint8}


@dataclass(frozen=True)
class GroupQuantization:
    """MLC's GroupQuantize settings for one quantization name."""

    name: str
    bits: int
    group_size: int
    storage_bits: int

    @property
    def per_storage(self) -> int:
        return self.storage_bits // self.bits

    @property
    def max_int(self) -> int:
        return 2 ** (self.bits - 1) - 1


QUANTIZATIONS = {
    "q4f16_1": GroupQuantization("q4f16_1", bits=4, group_size=32, storage_bits=32),
    "q4f32_1": GroupQuantization("q4f32_1", bits=4, group_size=32, storage_bits=32),
}


@dataclass(frozen=True)
class ParamRecord:
    """One array in a shard."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    format: str
    nbytes: int
    byte_offset: int
    shard: str


def read_ndarray_cache(dist: Path) -> tuple[ParamRecord, ...]:
    """The parameter records of a dist's ndarray-cache.json, in file order."""
    path = dist / WEIGHTS_MANIFEST
    fix = "pass a dist folder made by `webslm build`"
    cache = read_json(path, fix)
    try:
        return tuple(
            ParamRecord(name=p["name"], shape=tuple(p["shape"]), dtype=p["dtype"],
                        format=p["format"], nbytes=p["nbytes"], byte_offset=p["byteOffset"],
                        shard=shard["dataPath"])
            for shard in cache["records"] for p in shard["records"])
    except (ValueError, KeyError, TypeError) as error:
        raise BadInput(f"{path} is not an MLC ndarray-cache.json ({error})", fix) from error


def decode_array(record: ParamRecord, data: bytes) -> np.ndarray:
    """The array a record's bytes hold, as the web runtime decodes them."""
    if record.dtype == "bfloat16" or (record.dtype == "float32" and record.format == BF16_IN_F32):
        widened = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return widened.view(np.float32).reshape(record.shape)
    if record.dtype not in NUMPY_DTYPES:
        raise BadInput(f"{record.name} has dtype {record.dtype}, which webslm cannot read",
                       f"supported: {', '.join(sorted(NUMPY_DTYPES))}, bfloat16")
    return np.frombuffer(data, dtype=np.dtype(NUMPY_DTYPES[record.dtype]).newbyteorder("<")
                         ).reshape(record.shape)


def read_params(dist: Path) -> dict[str, np.ndarray]:
    """Every array of a dist by MLC name, decoded from its shard."""
    arrays: dict[str, np.ndarray] = {}
    shards: dict[str, bytes] = {}
    for record in read_ndarray_cache(dist):
        if record.shard not in shards:
            shard = dist / record.shard
            if not shard.is_file():
                raise BadInput(f"{shard} is missing (ndarray-cache.json lists it)",
                               "rebuild the dist with `webslm build`")
            shards[record.shard] = shard.read_bytes()
        data = shards[record.shard][record.byte_offset:record.byte_offset + record.nbytes]
        if len(data) != record.nbytes:
            raise BadInput(f"{record.shard} ends before {record.name} (see ndarray-cache.json)",
                           "rebuild the dist with `webslm build`")
        arrays[record.name] = decode_array(record, data)
    return arrays


def dequantize(q_weight: np.ndarray, q_scale: np.ndarray, quant: GroupQuantization) -> np.ndarray:
    """W [out, in] from MLC's packed q_weight [out, in/8] and q_scale [out, in/group]."""
    shifts = np.arange(quant.per_storage, dtype=np.uint32) * quant.bits
    mask = np.uint32((1 << quant.bits) - 1)
    packed = (q_weight[..., None] >> shifts) & mask  # [out, in/8, 8]
    values = packed.reshape(*q_weight.shape[:-1], -1).astype(np.float32) - quant.max_int
    scale = np.repeat(q_scale.astype(np.float32), quant.group_size, axis=-1)
    return (values * scale[..., :values.shape[-1]]).astype(q_scale.dtype)


def dequantized_params(dist: Path, quantization: str) -> dict[str, np.ndarray]:
    """The dist's parameters with every quantized weight expanded to `<name>.weight`."""
    params = read_params(dist)
    if not any(name.endswith(QUANTIZED_WEIGHT) for name in params):
        return params
    if quantization not in QUANTIZATIONS:
        raise BadInput(f"cannot dequantize {quantization} weights",
                       f"supported: {', '.join(QUANTIZATIONS)}")
    quant = QUANTIZATIONS[quantization]
    plain: dict[str, np.ndarray] = {}
    for name, array in params.items():
        if name.endswith(QUANTIZED_SCALE):
            continue
        if name.endswith(QUANTIZED_WEIGHT):
            base = name[:-len(QUANTIZED_WEIGHT)]
            plain[base + ".weight"] = dequantize(array, params[base + QUANTIZED_SCALE], quant)
        else:
            plain[name] = array
    return plain


# MLC fuses some projections into one weight; their parts, in the order they are stacked.
FUSED_PROJECTIONS = {
    "c_attn": ("q_proj", "k_proj", "v_proj"),
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


def to_transformers_names(params: Mapping[str, np.ndarray],
                          shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """MLC parameters under the transformers names in `shapes`, fused projections split.

    Raises BadInput naming the parameters that cannot be matched (another architecture's
    naming), so the caller can say the dequantized comparison is not available.
    """
    mapped: dict[str, np.ndarray] = {}
    for name, array in params.items():
        module, _, kind = name.rpartition(".")
        parent, _, leaf = module.rpartition(".")
        if leaf in FUSED_PROJECTIONS:
            parts = [f"{parent}.{part}.{kind}" for part in FUSED_PROJECTIONS[leaf]]
            if not all(p in shapes for p in parts):
                raise BadInput(f"cannot split {name} into {', '.join(parts)}", "")
            sizes = np.cumsum([shapes[p][0] for p in parts])[:-1]
            mapped.update(zip(parts, np.split(array, sizes, axis=0), strict=True))
        else:
            mapped[name] = array
    unknown = sorted(set(mapped) - set(shapes))
    missing = sorted(set(shapes) - set(mapped))
    if unknown or missing:
        raise BadInput(f"the dist's parameters do not match the model's (unknown: "
                       f"{unknown[:3]}, missing: {missing[:3]})", "")
    wrong = [n for n, a in mapped.items() if tuple(a.shape) != tuple(shapes[n])]
    if wrong:
        raise BadInput(f"the dist's parameter shapes differ from the model's ({wrong[:3]})", "")
    return mapped

