"""
RFC 6455 message assembly, sans-I/O: data frames in, whole messages out.

A WebSocket message may come as one frame or as a first frame and
continuation frames. :class:`Assembler` joins them and checks what a
message must satisfy before wsrpc sees it:

* the fragment sequence (a continuation needs a message under way; a new
  message cannot start inside one): 1002;
* no reserved bit set, as no extension that defines one is negotiated: 1002;
* the size of the whole message, fragments summed: 1009 over ``max_size``;
* at most :data:`~wsrpc._transports.base.MAX_FRAGMENTS` fragments (each
  costs a frame header and a Python object for a few bytes of payload):
  1009;
* valid UTF-8 in a text message: 1007.

A transport whose library checks some of these itself turns those checks
off; the rest is the same code for every transport. Imports nothing of
wsrpc but :mod:`.base` (the layers are in docs/architecture.md).
"""

from __future__ import annotations

from typing import NoReturn

from .base import MAX_FRAGMENTS

__all__ = ["BINARY", "CONTINUATION", "TEXT", "AssemblyError", "Assembler"]

CONTINUATION, TEXT, BINARY = 0, 1, 2
"""The data frame opcodes (RFC 6455, section 5.2)."""

_PROTOCOL_ERROR, _INVALID_PAYLOAD, _MESSAGE_TOO_BIG = 1002, 1007, 1009


class AssemblyError(Exception):
    """A frame that breaks the rules: close the connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Assembler:
    """
    Joins one connection's data frames into messages.

    Feed every data frame, in order, to :meth:`frame`; it returns the
    message a frame completes (``str`` for text, ``bytes`` for binary) or
    None while a fragmented message is under way. After an
    :class:`AssemblyError` the connection is to be closed: the assembler's
    state is reset and it must not be fed again.

    Args:
        max_size: The largest message, in bytes, fragments summed.
        check_sequence: Check the fragment sequence (off when the library
            does it already).
        check_reserved: Refuse frames with a reserved bit set (off when the
            library does it already).
    """

    __slots__ = ("_check_reserved", "_check_sequence", "_fragments", "_max_size", "_size", "_text")

    def __init__(
        self, max_size: int, *, check_sequence: bool = True, check_reserved: bool = True
    ) -> None:
        self._max_size = max_size
        self._check_sequence = check_sequence
        self._check_reserved = check_reserved
        self._fragments: list[bytes] | None = None
        self._size = 0
        self._text = False

    @property
    def in_message(self) -> bool:
        """Whether a fragmented message is under way."""
        return self._fragments is not None

    def frame(
        self, opcode: int, fin: bool, payload: bytes, *, reserved: bool = False
    ) -> bytes | str | None:
        """
        Take one data frame; return the message it completes, or None.

        Raises:
            AssemblyError: the frame breaks one of the rules above.
        """
        if reserved and self._check_reserved:
            self._fail(_PROTOCOL_ERROR, "reserved bit set, no extension negotiated")
        fragments = self._fragments
        if opcode == CONTINUATION:
            if fragments is None:
                # Only when the library does not check the sequence itself.
                self._fail(_PROTOCOL_ERROR, "continuation frame outside a message")
            self._size += len(payload)
            if self._size > self._max_size:
                self._fail(_MESSAGE_TOO_BIG, f"message over {self._max_size} bytes")
            fragments.append(payload)
            if not fin:
                if len(fragments) > MAX_FRAGMENTS:
                    self._fail(_MESSAGE_TOO_BIG, "too many fragments")
                return None
            self._fragments = None
            data = b"".join(fragments)
            return self._decoded(data) if self._text else data
        if fragments is not None and self._check_sequence:
            self._fail(_PROTOCOL_ERROR, "new message inside a fragmented one")
        if len(payload) > self._max_size:
            self._fail(_MESSAGE_TOO_BIG, f"message over {self._max_size} bytes")
        if not fin:
            self._fragments = [payload]
            self._size = len(payload)
            self._text = opcode == TEXT
            return None
        return self._decoded(payload) if opcode == TEXT else payload

    def reset(self) -> None:
        """Forget a message under way (the connection is closing)."""
        self._fragments = None
        self._size = 0

    def _decoded(self, data: bytes) -> str:
        try:
            return str(data, "utf-8")
        except UnicodeDecodeError:
            self._fail(_INVALID_PAYLOAD, "invalid UTF-8 in a text message")

    def _fail(self, code: int, reason: str) -> NoReturn:
        self.reset()
        raise AssemblyError(code, reason)
