"""
Write seed inputs for atheris_codecs.py: valid frames of every message kind,
and a few near misses, so the fuzzer starts from the protocol's shapes.

Usage (from fuzz/): .venv/bin/python make_seeds.py  -> seeds/msgpack, seeds/tgrid
"""

from __future__ import annotations

import pathlib

import msgpack

from wsrpc.codecs import Codec, MsgpackCodec
from wsrpc.exceptions import EncodeError
from wsrpc.messages import Accept, Call, Cancel, Credit, Error, Header, Item, Items, Message, Return
from wsrpc.tgrid import TgridCodec

HERE = pathlib.Path(__file__).parent

VALUE = {"list": [1, -1, 2**64 - 1, 1.5, True, None, "s", b"\x00"], "map": {"k": [[], {}]}}

MESSAGES: list[Message] = [
    Header(None),
    Header({"token": "abc"}, max_calls=128, max_size=2**20),
    Accept(max_calls=4, max_size=2**20),
    Accept(),
    Call(1, "add", [1, 2]),
    Call(7, "f", [], None),
    Call(8, "scientific.sqrt", [16], {"k": 1}),
    Call(2, "a.b.c", [VALUE]),
    Return(1, VALUE),
    Return(2, None),
    Return(7, 3),
    Error(1, "ValueError", "bad", None),
    Error(3, "KeyError", "'k'", "Traceback"),
    Cancel(7),
    Cancel(1),
    # streams (the msgpack codec only)
    Accept(max_calls=4, max_size=2**20, streams=2),
    Call(3, "ticks", [3], None, None, 16),
    Call(4, "ticks", [], {"k": 1}, 7, 256),
    Item(3, VALUE),
    Items(3, [1, "a", VALUE]),
    Items(3, list(range(300))),
    Credit(3, 8),
]


def main() -> None:
    codecs: dict[str, Codec] = {"msgpack": MsgpackCodec(), "tgrid": TgridCodec()}
    for name, codec in codecs.items():
        folder = HERE / "seeds" / name
        folder.mkdir(parents=True, exist_ok=True)
        count = 0
        for message in MESSAGES:
            try:
                frame = codec.encode(message)
            except EncodeError:
                continue  # tgrid has no Cancel, no kwargs, no bytes
            data = frame.encode() if isinstance(frame, str) else frame
            (folder / f"seed-{count:03}").write_bytes(data)
            count += 1
        if name == "msgpack":
            extras = [
                msgpack.packb([2, 1, "f", [], {1: 2}]),  # int key
                msgpack.packb([3, 1, msgpack.ExtType(5, b"x")]),  # ext
                msgpack.packb([0, 1, None, {"calls": 0}]),
                b"\x91" * 600 + b"\xc0",  # deep nesting
            ]
        else:
            extras = [
                b'{"uid":1,"success":false}',
                b'{"uid":1,"success":false,"value":{"name":1,"message":[2]}}',
                b'{"listener":"f","uid":1,"parameters":[{"type":"undefined"}]}',
                b"[" * 300 + b"]" * 300,
                b'{"header":"\\ud800"}',
            ]
        for data in extras:
            (folder / f"seed-{count:03}").write_bytes(data)
            count += 1
        print(f"{folder}: {count} seeds")


if __name__ == "__main__":
    main()
