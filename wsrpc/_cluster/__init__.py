"""
Servers in many processes forming one application, joined by a backplane.

``wire`` (the messages between nodes, sans I/O), ``backplane`` (the seam
to a broker), ``redis`` (the broker Redis), ``registry`` (a node's
registry: ids, routing, cluster-wide calls, broadcast, death, outages).
See ``docs/scaling.md``. This package's ``__init__`` imports nothing, so
that ``wire`` stays importable without asyncio.

Layer: the connections, wsrpc's asyncio layer (docs/architecture.md),
except ``wire``, in the sans-I/O core.
"""

from __future__ import annotations

__all__: list[str] = []
