"""Free TCP ports on the loopback interface."""
import socket


def free_port() -> int:
    """Ask the kernel for an unused 127.0.0.1 port.

    The socket is closed before the port is used, so another process could take it in
    between; on a test machine that race is rare enough to accept.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
