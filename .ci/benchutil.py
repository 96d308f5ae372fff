"""Helpers shared by the benchmark scripts in .ci/ (run as `python3 .ci/NAME.py`:
the script's own folder is on the import path)."""

import socket


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
