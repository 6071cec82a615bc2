"""
A structural pre-check of msgpack frames, against amplification.

msgpack's C decoder allocates each array and map at the size its header
declares before it reads a single element, and an array32 header declares up
to 2**32 - 1 elements in five bytes. Nested a thousand deep, a few kilobytes
of headers make it allocate gigabytes for a frame it then rejects as
truncated. :func:`check_declared` walks the frame's headers without building
anything and refuses it when its containers declare more elements in total
than the frame has bytes (every element takes at least one byte, so a valid
frame never does) or nest deeper than the decoder allows.

Since it visits every header anyway, the walk also refuses what the decoder
would refuse only after building everything before it: a truncated frame,
the byte 0xc1, bytes after the message, a map key that is neither a string
nor bytes, an ext type other than msgpack's timestamp. What is left to the
decoder is invalid UTF-8 in a string.

Only frames holding a 16- or 32-bit array or map header can amplify much
(the fixed-size headers declare at most 15 elements), so the codec runs the
walk only on frames containing one of those header bytes.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

import re

__all__ = ["MAX_CONTAINERS", "MAX_DEPTH", "check_declared"]

MAX_DEPTH = 1000
"""Deepest nesting accepted; msgpack's decoder stack allows about 1024."""

MAX_CONTAINERS = 2**17
"""
Most arrays and maps one frame may hold (131,072), by default; more close
the connection with 1009 (see :class:`~wsrpc.codecs.MsgpackCodec`).

Containers are what decoding costs: about 100 ns each to build and free
(measured: a frame of 813,616 small arrays, 78 ms; 800,000 small ints,
11 ms; 1 MiB of bytes or str, under 0.1 ms), so this bounds one frame's
decode time to some 15 ms on a 2-core VM, a few times more on a loaded one.
"""

# One-byte values: fixints, nil, booleans, and the empty fixmap and fixarray
# (the cheapest containers an attacker can send: they open nothing).
_ONE_BYTE = frozenset([*range(0x00, 0x80), 0x80, 0x90, 0xC0, 0xC2, 0xC3, *range(0xE0, 0x100)])
_ONE_BYTE_RUN = re.compile(b"[\x00-\x80\x90\xc0\xc2\xc3\xe0-\xff]+")
# Size of the fixed part of each scalar type byte 0xc0-0xdf (None: a container
# or a variable length, handled below; 0xc1 is never used).
_FIXED = {
    0xC0: 1, 0xC2: 1, 0xC3: 1,  # nil, false, true
    0xCA: 5, 0xCB: 9,  # float 32, 64
    0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9,  # uint 8-64
    0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9,  # int 8-64
    0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18,  # fixext 1-16
}  # fmt: skip
# Variable-length types: (bytes of the length field, extra fixed bytes).
_VARIABLE = {
    0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0),  # bin 8-32
    0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),  # ext 8-32 (plus the type byte)
    0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),  # str 8-32
}  # fmt: skip
# Type bytes a map key may start with: str and bin (the decoder's strict_map_key).
_KEY = frozenset([*range(0xA0, 0xC0), 0xC4, 0xC5, 0xC6, 0xD9, 0xDA, 0xDB])
# The only ext the codec accepts is msgpack's timestamp: type -1 with 4, 8 or
# 12 bytes of data, in whichever ext format carries them.
_TIMESTAMP_SIZES = frozenset([4, 8, 12])
_EXT = frozenset([0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8])
# Containers with a length field: (bytes of the length field, elements per entry).
_CONTAINER = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


class Refused(ValueError):
    """The frame declares more than it holds, or nests too deep."""


def check_declared(frame: bytes | memoryview) -> None:
    """
    Raise :exc:`Refused` when ``frame``'s containers declare more elements in
    total than it has bytes, or nest deeper than :data:`MAX_DEPTH`, or when
    it is not exactly one well-formed msgpack object: truncated, holding the
    byte msgpack never uses (0xc1), or followed by more bytes.

    The walk visits every header, so a frame that passes decodes without
    structural surprises; what only decoding checks (UTF-8, map key types,
    ext types) is left to the decoder.
    """
    size = len(frame)
    budget = size
    position = 0
    open_counts = [1]  # objects still to read in each open container
    in_map = [False]  # whether each open container is a map
    while open_counts:
        if position >= size:
            raise Refused("truncated msgpack")
        byte = frame[position]
        # In a map, keys and values alternate, keys first: the element read
        # next is a key when an even number is left.
        at_key = in_map[-1] and open_counts[-1] % 2 == 0
        if byte in _ONE_BYTE:
            # A run of one-byte values (nil, booleans, small ints, empty
            # containers) is skipped at C speed: the cheapest elements an
            # attacker can send.
            run = _ONE_BYTE_RUN.match(frame, position)
            assert run is not None
            taken = min(run.end() - position, open_counts[-1])
            if in_map[-1] and (at_key or taken > 1):
                raise Refused("map keys must be strings or bytes")
            open_counts[-1] -= taken
            position += taken
            while open_counts and open_counts[-1] == 0:
                open_counts.pop()
                in_map.pop()
            continue
        if at_key and byte not in _KEY:
            raise Refused("map keys must be strings or bytes")
        if byte in _EXT:
            if byte in _FIXED:  # fixext: the length is in the type byte
                length: int | None = _FIXED[byte] - 2
                type_at = position + 1
            else:  # ext 8-32: a length field, then the type
                width = _VARIABLE[byte][0]
                length = int.from_bytes(frame[position + 1 : position + 1 + width], "big")
                type_at = position + 1 + width
            if length not in _TIMESTAMP_SIZES or type_at >= size or frame[type_at] != 0xFF:
                raise Refused("ext types other than the timestamp are not accepted")
        open_counts[-1] -= 1
        count = 0
        is_map = False
        if byte <= 0x8F:  # fixmap (fixints were taken as runs above)
            count = (byte & 0x0F) * 2
            is_map = True
            position += 1
        elif byte <= 0x9F:  # fixarray
            count = byte & 0x0F
            position += 1
        elif byte <= 0xBF:  # fixstr
            position += 1 + (byte & 0x1F)
        elif byte in _FIXED:
            position += _FIXED[byte]
        elif byte in _VARIABLE:
            width, extra = _VARIABLE[byte]
            length = int.from_bytes(frame[position + 1 : position + 1 + width], "big")
            position += 1 + width + extra + length
        elif byte in _CONTAINER:
            width, per_entry = _CONTAINER[byte]
            count = int.from_bytes(frame[position + 1 : position + 1 + width], "big") * per_entry
            is_map = per_entry == 2
            position += 1 + width
        else:
            raise Refused("undecodable msgpack (byte 0xc1)")
        if count:
            budget -= count
            if budget < 0:
                raise Refused("containers declare more elements than the frame holds")
            open_counts.append(count)
            in_map.append(is_map)
            if len(open_counts) > MAX_DEPTH + 1:  # the root's entry is no container
                raise Refused(f"nested deeper than {MAX_DEPTH} levels")
        while open_counts and open_counts[-1] == 0:
            open_counts.pop()
            in_map.pop()
    if position != size:
        # Past the end (a string or bin longer than the frame) or short of it.
        raise Refused("truncated msgpack" if position > size else "extra data after the message")
