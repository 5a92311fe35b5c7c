"""Loopback helpers shared by the benchmark scripts."""
import socket


def free_port():
    """A free port on 127.0.0.1 (bound, then released for a server to bind)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
