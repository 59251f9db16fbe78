"""Parsing of --metrics-address / NVPLUGIN_METRICS_ADDRESS (pure core)."""

from __future__ import annotations

import pytest

from nvplugin.core.address import (
    DEFAULT_METRICS_ADDRESS,
    AddressError,
    ListenAddress,
    parse_listen_address,
)
from nvplugin.core.config import Config, ConfigError, resolve


@pytest.mark.parametrize(
    ("raw", "host", "port"),
    [
        (":8080", "", 8080),
        ("0.0.0.0:9400", "0.0.0.0", 9400),
        ("127.0.0.1:1", "127.0.0.1", 1),
        ("localhost:65535", "localhost", 65535),
        ("metrics.kube-system.svc:80", "metrics.kube-system.svc", 80),
        ("[::1]:8080", "::1", 8080),
        ("[::]:8080", "::", 8080),
        ("  :8080  ", "", 8080),
    ],
)
def test_accepts_host_port_forms(raw: str, host: str, port: int) -> None:
    assert parse_listen_address("--metrics-address", raw) == ListenAddress(host, port)


@pytest.mark.parametrize("raw", ["off", "OFF", "none", "disabled"])
def test_off_switches_the_endpoint_off(raw: str) -> None:
    assert parse_listen_address("--metrics-address", raw) is None


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "the value is empty"),
        ("8080", "no port"),
        ("localhost", "no port"),
        (":", "the port '' is not a number"),
        (":http", "the port 'http' is not a number"),
        (":-1", "the port '-1' is not a number"),
        (":0", "the port 0 is out of range"),
        (":65536", "the port 65536 is out of range"),
        (":99999999999", "out of range"),
        (":\uff18\uff10", "is not a number"),  # full-width digits: str.isdigit() alone would take them
        ("::1:8080", "write an IPv6 address in brackets, e.g. [::1]:8080"),
        ("[::1]8080", "must be followed by :PORT"),
        ("[::1:8080", "must be followed by :PORT"),
        ("[127.0.0.1]:80", "'127.0.0.1' is not an IPv6 address"),
        ("bad host:80", "neither an IP address nor a host name"),
        ("-lead.example:80", "neither an IP address nor a host name"),
        ("300.1.1.1:80", "neither an IP address nor a host name"),
        ("1.2.3:80", "neither an IP address nor a host name"),
        ("host_name:80", "neither an IP address nor a host name"),
    ],
)
def test_rejects_malformed_values_with_a_clear_message(raw: str, why: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_listen_address("--metrics-address", raw)
    message = str(caught.value)
    assert message.startswith("--metrics-address: expected HOST:PORT with port 1-65535")
    assert f"got {raw.strip()!r}" in message
    assert why in message


def test_port_zero_only_when_allowed() -> None:
    assert parse_listen_address("x", "127.0.0.1:0", allow_port_zero=True) == ListenAddress("127.0.0.1", 0)
    with pytest.raises(AddressError, match="port 1-65535"):
        parse_listen_address("x", "127.0.0.1:0")


def test_str_round_trips() -> None:
    for raw in (":8080", "127.0.0.1:9", "[::1]:80", "localhost:1"):
        address = parse_listen_address("x", raw)
        assert address is not None
        assert str(address) == raw
        assert parse_listen_address("x", str(address)) == address


def test_bind_host() -> None:
    assert ListenAddress("", 1).bind_host is None
    assert ListenAddress("::1", 1).bind_host == "::1"


def test_config_default_flag_env_and_error() -> None:
    assert Config().metrics_address == DEFAULT_METRICS_ADDRESS == ListenAddress("", 8080)
    assert resolve({}, {}).metrics_address == DEFAULT_METRICS_ADDRESS
    assert resolve({}, {"NVPLUGIN_METRICS_ADDRESS": "127.0.0.1:9100"}).metrics_address == ListenAddress(
        "127.0.0.1", 9100
    )
    # flag beats env; "off" from the flag wins too
    assert resolve({"metrics_address": "off"}, {"NVPLUGIN_METRICS_ADDRESS": ":9100"}).metrics_address is None
    with pytest.raises(
        ConfigError, match=r"^environment variable NVPLUGIN_METRICS_ADDRESS: expected HOST:PORT"
    ):
        resolve({}, {"NVPLUGIN_METRICS_ADDRESS": "nonsense"})
    with pytest.raises(ConfigError, match=r"^--metrics-address: expected HOST:PORT with port 1-65535"):
        resolve({"metrics_address": ":0"}, {})
