"""RFC 6455 message assembly on its own: frames in, messages or errors out, no sockets."""

from __future__ import annotations

import pytest

from wsrpc._transports.assembly import BINARY, CONTINUATION, TEXT, Assembler, AssemblyError
from wsrpc._transports.base import MAX_FRAGMENTS


def under_way(assembler: Assembler) -> bool:
    """A call, so that mypy does not narrow the property across frames."""
    return assembler.in_message


def refusal(assembler: Assembler, *frames: tuple[int, bool, bytes]) -> tuple[int, str]:
    with pytest.raises(AssemblyError) as error:
        for opcode, fin, payload in frames:
            assembler.frame(opcode, fin, payload)
    assert not assembler.in_message  # reset: nothing of the message is kept
    return error.value.code, error.value.reason


def test_whole_frames_are_messages() -> None:
    assembler = Assembler(100)
    assert assembler.frame(BINARY, True, b"\x01\x02") == b"\x01\x02"
    assert assembler.frame(TEXT, True, "héllo".encode()) == "héllo"


def test_fragments_are_joined() -> None:
    assembler = Assembler(100)
    assert assembler.frame(TEXT, False, "hé".encode()[:2]) is None  # split inside é
    assert under_way(assembler)
    assert assembler.frame(CONTINUATION, False, "hé".encode()[2:]) is None
    assert assembler.frame(CONTINUATION, True, b"llo") == "héllo"
    assert not under_way(assembler)
    assert assembler.frame(BINARY, False, b"ab") is None
    assert assembler.frame(CONTINUATION, True, b"cd") == b"abcd"


def test_the_size_counts_every_fragment() -> None:
    assembler = Assembler(10)
    assert assembler.frame(BINARY, True, b"x" * 10) == b"x" * 10  # at the limit
    assert refusal(assembler, (BINARY, True, b"x" * 11)) == (1009, "message over 10 bytes")
    code, _ = refusal(
        assembler,
        (BINARY, False, b"x" * 6),
        (CONTINUATION, False, b"x" * 4),
        (CONTINUATION, True, b"x"),
    )
    assert code == 1009


def test_too_many_fragments() -> None:
    assembler = Assembler(10 * MAX_FRAGMENTS)
    frames = [(BINARY, False, b"x")] + [(CONTINUATION, False, b"x")] * MAX_FRAGMENTS
    assert refusal(assembler, *frames) == (1009, "too many fragments")


def test_invalid_utf8_in_text() -> None:
    assert refusal(Assembler(100), (TEXT, True, b"\xff")) == (
        1007,
        "invalid UTF-8 in a text message",
    )
    code, _ = refusal(Assembler(100), (TEXT, False, b"ok"), (CONTINUATION, True, b"\xc3"))
    assert code == 1007
    # Binary messages are bytes: no UTF-8 to check.
    assert Assembler(100).frame(BINARY, True, b"\xff") == b"\xff"


def test_the_fragment_sequence() -> None:
    code, reason = refusal(Assembler(100), (CONTINUATION, True, b"x"))
    assert (code, reason) == (1002, "continuation frame outside a message")
    code, reason = refusal(Assembler(100), (BINARY, False, b"x"), (TEXT, True, b"y"))
    assert (code, reason) == (1002, "new message inside a fragmented one")


def test_reserved_bits() -> None:
    with pytest.raises(AssemblyError) as error:
        Assembler(100).frame(BINARY, True, b"x", reserved=True)
    assert error.value.code == 1002
    # A library that checks them itself turns the check off.
    assert Assembler(100, check_reserved=False).frame(BINARY, True, b"x", reserved=True) == b"x"
