"""
wsrpc with ``validate=True`` on both sides (needs msgspec), otherwise the
same code and options as :mod:`systems.wsrpc_system`: what checking every
call's arguments and result against the annotations costs
(``add(a: int, b: int) -> int``).
"""

from __future__ import annotations

from . import common, wsrpc_system

if __name__ == "__main__":
    wsrpc_system.VALIDATE = True
    common.main(serve=wsrpc_system.serve, connect=wsrpc_system.connect)
