"""
The ceiling with websockets' default compression (permessage-deflate).

Same code as :mod:`systems.ws_msgpack`; only ``compression="deflate"`` (the
websockets default) differs, on both sides.
"""

from __future__ import annotations

from .ws_msgpack import main

if __name__ == "__main__":
    main("deflate")
