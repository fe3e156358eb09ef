"""Is a port free? Checked with a plain socket before anything slow starts, and worded as one line that says
which flag (and environment variable) picks another.

A listener already on host:port makes bind() fail on Linux even with SO_REUSEADDR, which is set here as gRPC and
http.server set it, so a port left in TIME_WAIT by a process that just exited still counts as free.
"""

from __future__ import annotations

import errno
import socket

from vaeserve.errors import VaeserveError


class PortError(VaeserveError):
    """A port that cannot be listened on; the message names its flag."""


def port_error(flag: str, host: str, port: int, exc: OSError, env: str = "", host_flag: str = "--host") -> PortError:
    """The one line for a failed bind of host:port, set by `flag` (and `env`, when there is one) and `host_flag`."""
    if isinstance(exc, socket.gaierror):
        return PortError(f"{host_flag} {host}: cannot resolve it to an address to listen on ({exc.strerror or exc})")
    if exc.errno == errno.EADDRNOTAVAIL:
        return PortError(f"{host_flag} {host}: not an address of this machine, cannot listen on it ({exc.strerror})")
    if exc.errno == errno.EADDRINUSE:
        how = f"{flag} or {env}" if env else flag
        return PortError(f"{flag} {port}: {host}:{port} is in use (another vaeserve?); choose another with {how}")
    return PortError(f"{flag} {port}: cannot listen on {host}:{port}: {exc.strerror or exc}")


def check_free(host: str, port: int, flag: str, env: str = "", host_flag: str = "--host") -> None:
    """Raises PortError unless every address `host` resolves to can listen on `port` now."""
    try:
        addresses = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)  # fmt: skip
    except UnicodeError as exc:  # a name IDNA cannot encode, e.g. a label over 63 characters
        raise port_error(flag, host, port, socket.gaierror(str(exc)), env, host_flag) from exc
    except OSError as exc:
        raise port_error(flag, host, port, exc, env, host_flag) from exc
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise port_error(flag, host, port, exc, env, host_flag) from exc
