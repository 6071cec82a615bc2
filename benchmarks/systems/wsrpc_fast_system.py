"""
wsrpc on its fast transport: ``transport="picows"`` on both sides, both
processes on uvloop (what ``pip install wsrpc[fast]`` brings). Otherwise the
same code and options as :mod:`systems.wsrpc_system`.
"""

from __future__ import annotations

from . import common, wsrpc_system

if __name__ == "__main__":
    wsrpc_system.TRANSPORT = "picows"
    common.main(serve=wsrpc_system.serve, connect=wsrpc_system.connect, default_uvloop=True)
