"""``python -m wsrpc``: the ``wsrpc`` command (see :mod:`wsrpc.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
