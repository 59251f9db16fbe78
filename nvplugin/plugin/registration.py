"""Registering a plugin server with the kubelet, and retrying with backoff when refused."""

from __future__ import annotations

import logging
import random

import anyio
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.exceptions import ProtocolError, StreamTerminatedError

from nvplugin.api import v1beta1 as api
from nvplugin.core.excerpt import clip
from nvplugin.plugin.server import PLUGIN_OPTIONS

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"


class RegistrationFailed(Exception):
    """The kubelet refused the registration or could not be reached; the message says which."""


async def register_once(kubelet_socket: str, endpoint: str, resource_name: str, timeout: float = 5.0) -> None:
    channel = Channel(path=kubelet_socket)
    try:
        await api.RegistrationStub(channel).register(
            api.RegisterRequest(
                version=API_VERSION, endpoint=endpoint, resource_name=resource_name, options=PLUGIN_OPTIONS
            ),
            timeout=timeout,
        )
    except GRPCError as exc:
        # The kubelet's words, cut short: they are logged at every retry.
        raise RegistrationFailed(
            f"the kubelet refused {resource_name}: {clip(exc.message or exc.status.name)}"
        ) from None
    except (OSError, TimeoutError, StreamTerminatedError, ProtocolError) as exc:
        raise RegistrationFailed(f"cannot reach the kubelet at {kubelet_socket}: {clip(str(exc))}") from None
    finally:
        channel.close()


async def register_with_retry(
    kubelet_socket: str,
    endpoint: str,
    resource_name: str,
    initial_delay: float = 0.05,
    max_delay: float = 10.0,
) -> int:
    """Register until the kubelet accepts; returns the number of attempts. Cancel to give up."""
    delay = initial_delay
    attempt = 0
    while True:
        attempt += 1
        try:
            await register_once(kubelet_socket, endpoint, resource_name)
        except RegistrationFailed as exc:
            # Jitter keeps many plugins (or many nodes' agents) from retrying in lockstep.
            wait = delay * random.uniform(0.5, 1.5)
            log.warning("registration attempt %d failed: %s; retrying in %.2f s", attempt, exc, wait)
            await anyio.sleep(wait)
            delay = min(delay * 2, max_delay)
            continue
        log.info("registered %s with the kubelet (endpoint %s)", resource_name, endpoint)
        return attempt
