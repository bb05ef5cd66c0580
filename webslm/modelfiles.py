"""The small files a model folder ships (configs, tokenizer): each must be what its name says.

A model folder can come from an archive or a download, and every config and tokenizer file of it
ends up in the dist and on the Hub. So before a build copies one, it is read as its format: a
`.json` file is JSON, `merges.txt` is BPE merge lines ("a b"), `chat_template.jinja` is a Jinja
template, `tokenizer.model` is a SentencePiece ModelProto (protobuf). A private key or any other
file that happens to carry one of these names is refused, naming the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from webslm.errors import BadInput
from webslm.files import read_json

FIX = "replace it with the model's own file (re-download or re-save the model)"
# SentencePiece's ModelProto: pieces = 1, trainer_spec = 2, normalizer_spec = 3,
# self_test_data = 4, denormalizer_spec = 5; every one a length-delimited message.
SENTENCEPIECE_FIELDS = range(1, 6)
SENTENCEPIECE_PIECES = 1
LENGTH_DELIMITED = 2


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """A protobuf varint at `position`: (value, position after it); ValueError when cut off."""
    value, shift = 0, 0
    while position < len(data) and shift < 64:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise ValueError("truncated varint")


def is_sentencepiece_model(data: bytes) -> bool:
    """Whether bytes are a ModelProto: only its five message fields, each exactly within the
    data, and at least one piece. Text (a PEM key) and other binaries fail at the first byte."""
    position, pieces = 0, 0
    try:
        while position < len(data):
            key, position = _varint(data, position)
            field, wire_type = key >> 3, key & 7
            if wire_type != LENGTH_DELIMITED or field not in SENTENCEPIECE_FIELDS:
                return False
            length, position = _varint(data, position)
            position += length
            if position > len(data):
                return False
            pieces += field == SENTENCEPIECE_PIECES
    except ValueError:
        return False
    return pieces > 0


def _text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadInput(f"{path} is not UTF-8 text, so it is no {path.name}", FIX) from error


def _merges(path: Path) -> None:
    lines = [line for line in _text(path).split("\n") if line and not line.startswith("#")]
    bad = next((n for n, line in enumerate(lines, 1) if len(line.split(" ")) != 2), None)
    if bad is not None or not lines:
        raise BadInput(f"{path} is not a BPE merges file (each line two tokens)", FIX)


def _template(path: Path) -> None:
    if not any(mark in _text(path) for mark in ("{{", "{%")):
        raise BadInput(f"{path} is not a Jinja chat template", FIX)


def _sentencepiece(path: Path) -> None:
    if not is_sentencepiece_model(path.read_bytes()):
        raise BadInput(f"{path} is not a SentencePiece model", FIX)


def _json(path: Path) -> None:
    read_json(path, FIX)


CHECKS: dict[str, Callable[[Path], None]] = {
    "merges.txt": _merges,
    "chat_template.jinja": _template,
    "tokenizer.model": _sentencepiece,
}


def check_model_file(path: Path) -> None:
    """BadInput naming the file when a config or tokenizer file is not in its format."""
    check = CHECKS.get(path.name, _json if path.suffix == ".json" else None)
    if check is not None:
        check(path)
