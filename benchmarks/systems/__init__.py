"""
One module per benchmarked system.

Each module is run twice per measurement, as two processes::

    python -m systems.<module> server [--uvloop]
    python -m systems.<module> client --port N --scenario S [options]

The server prints ``PORT <n>`` once it listens on 127.0.0.1 (port 0), then
serves until it is killed. The client runs one scenario and prints
``RESULT <json>``; in the ``many_clients`` and ``idle`` scenarios it also prints
``SYNC <label>`` lines and waits for a line on stdin, so that ``run.py`` can
read the server's memory at those points. See :mod:`systems.common`.
"""
