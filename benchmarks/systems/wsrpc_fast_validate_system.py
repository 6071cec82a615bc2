"""
wsrpc-fast (``transport="picows"``, uvloop) with ``validate=True`` on both
sides (needs msgspec), otherwise the same as :mod:`systems.wsrpc_fast_system`.
"""

from __future__ import annotations

from . import common, wsrpc_system

if __name__ == "__main__":
    wsrpc_system.TRANSPORT = "picows"
    wsrpc_system.VALIDATE = True
    common.main(serve=wsrpc_system.serve, connect=wsrpc_system.connect, default_uvloop=True)
