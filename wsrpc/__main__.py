"""
``python -m wsrpc``: the ``wsrpc`` command (see :mod:`wsrpc.cli`).

Layer: a front end (docs/architecture.md). May import any of wsrpc;
nothing in wsrpc imports it.
"""

import sys

from .cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
