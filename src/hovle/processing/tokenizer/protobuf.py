"""Just enough of the protobuf wire format to inspect a SentencePiece ``ModelProto`` (no protobuf
package needed)."""

from __future__ import annotations


def varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def proto_fields(data: bytes) -> dict[int, list[bytes | int]]:
    """Top-level fields of a protobuf message (just enough wire format to inspect ModelProto)."""
    fields: dict[int, list[bytes | int]] = {}
    pos = 0
    while pos < len(data):
        key, pos = varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        fields.setdefault(number, []).append(value)
    return fields


def has_denormalizer(model_proto: bytes) -> bool:
    """Whether the SentencePiece model rewrites decoded text as a whole (ModelProto field 5,
    ``denormalizer_spec``, with a non-empty ``precompiled_charsmap``, field 2). When in doubt: yes."""
    try:
        for spec in proto_fields(model_proto).get(5, []):
            if isinstance(spec, int):
                return True
            if any(isinstance(m, bytes) and m for m in proto_fields(spec).get(2, [])):
                return True
        return False
    except ValueError:
        return True
