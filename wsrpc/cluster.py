"""
Servers in many processes, one application: the backplanes.

``WebSocketServer(..., backplane=RedisBackplane(url))`` makes a server one
node of an application (see ``docs/scaling.md``). :class:`Backplane` is the
seam an engine other than Redis fills.

Layer: the connections, wsrpc's asyncio layer (docs/architecture.md).
Imports the core and the transports; never a front end.
"""

from __future__ import annotations

from ._cluster.backplane import Backplane
from ._cluster.redis import RedisBackplane

__all__ = ["Backplane", "RedisBackplane"]
