"""Listen addresses for the agent's HTTP endpoint (metrics and probes).

Pure parsing: `parse_listen_address` turns `HOST:PORT`, `:PORT` or `[IPV6]:PORT` into a
ListenAddress, or raises AddressError with a message that names the flag and what was expected.
`off` switches the endpoint off (None).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class AddressError(ValueError):
    """A listen address the agent cannot use; the message names the flag and what was expected.
    (core.config turns it into a ConfigError; kept separate so this module imports nothing.)"""


DEFAULT_METRICS_PORT = 8080
DISABLED_WORDS = ("off", "none", "disabled")

# A DNS name (RFC 1123 labels): what a host part may be when it is not an IP literal.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$"  # compiled on first use, off the start-up path


@dataclass(frozen=True, slots=True)
class ListenAddress:
    # "" means every interface of the (pod's) network namespace.
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def bind_host(self) -> str | None:
        """The host to bind; None asks for every interface (IPv4 and, where configured, IPv6)."""
        return self.host or None


DEFAULT_METRICS_ADDRESS = ListenAddress("", DEFAULT_METRICS_PORT)


def parse_listen_address(where: str, raw: object, *, allow_port_zero: bool = False) -> ListenAddress | None:
    """`HOST:PORT`, `:PORT` (every interface) or `[IPV6]:PORT`; `off` disables (None).

    Port 0 (pick a free port) is refused unless `allow_port_zero`: the kubelet's probes and
    Prometheus need a port known in advance."""
    text = str(raw).strip()
    lowest = 0 if allow_port_zero else 1

    def bad(why: str) -> AddressError:
        return AddressError(
            f"{where}: expected HOST:PORT with port {lowest}-65535 (e.g. :{DEFAULT_METRICS_PORT}, "
            f"127.0.0.1:{DEFAULT_METRICS_PORT}, [::1]:{DEFAULT_METRICS_PORT}) or off, got {text!r}: {why}"
        )

    if text.lower() in DISABLED_WORDS:
        return None
    if not text:
        raise bad("the value is empty")
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise bad("an IPv6 address in brackets must be followed by :PORT")
        host, port_text = text[1:close], text[close + 2 :]
        if not _is_ipv6(host):
            raise bad(f"{host!r} is not an IPv6 address")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise bad("no port")
        if ":" in host:
            raise bad(f"write an IPv6 address in brackets, e.g. [{host}]:{port_text}")
        numeric = host.replace(".", "").isdigit()
        if host and not (_is_ipv4(host) or (re.match(_HOSTNAME, host) and not numeric)):
            raise bad(f"{host!r} is neither an IP address nor a host name")
    if not (port_text.isascii() and port_text.isdigit()):
        raise bad(f"the port {port_text!r} is not a number")
    port = int(port_text)
    if not lowest <= port <= 65535:
        raise bad(f"the port {port} is out of range")
    return ListenAddress(host, port)


def _is_ipv4(text: str) -> bool:
    import ipaddress  # here, not at the top: config (on the path to Register) imports this module

    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_ipv6(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
