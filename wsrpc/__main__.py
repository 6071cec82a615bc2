"""``python -m wsrpc``: the ``wsrpc`` command (see :mod:`wsrpc.cli`)."""

import sys

from .cli import main

sys.exit(main())
