"""Writing the CDI spec that Allocate's CDI device names resolve in (the shell of core/cdi.py).

`write_specs` is blocking (it reads the driver root and writes files): call it in a worker
thread on start, after rediscovery and on reload, whenever a CDI device-list strategy is on.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nvplugin.cdi.hostfacts import DriverNotFoundError, find_host_facts
from nvplugin.core.cdi import OWNED_SPEC_FILES, CdiOptions, build_spec
from nvplugin.core.config import Config
from nvplugin.core.inventory import Inventory
from nvplugin.core.resources import Resource

log = logging.getLogger(__name__)

SPEC_FILE_MODE = 0o644


class CdiSpecError(Exception):
    """The CDI spec could not be made or written; the message names the path and the fix."""


class CdiDriverMissing(CdiSpecError):
    """No driver files to describe under the driver root (a node, or simulated GPUs, without
    the NVIDIA driver)."""


@dataclass(frozen=True, slots=True)
class CdiWriteResult:
    # The spec file written (or already up to date), None when there was no device to describe.
    path: str | None
    # CDI device names in it (each device by UUID and by index).
    device_names: int
    # Spec files of ours that were removed (their resources are no longer advertised).
    removed: tuple[str, ...]
    # What the user should know (missing device nodes, unreadable ld cache, ...).
    warnings: tuple[str, ...]
    # False when the file already held exactly this spec (nothing was written).
    changed: bool


def options_from_config(config: Config) -> CdiOptions:
    """The agent's configuration as CDI options. The container driver root counts only where
    it exists (NVIDIA's default /driver-root is a path inside its own container). ValueError
    (CdiOptionsError) for an unknown feature flag or hook name."""
    container_root = config.container_driver_root
    return CdiOptions(
        driver_root=config.nvidia_driver_root,
        dev_root=config.dev_root,
        container_driver_root=container_root if container_root and os.path.isdir(container_root) else None,
        nvidia_cdi_hook_path=config.nvidia_cdi_hook_path,
        spec_dir=config.cdi_spec_dir,
        feature_flags=tuple(config.cdi_feature_flags),
        disabled_hooks=tuple(config.cdi_disable_hooks),
    )


def write_specs(
    inventory: Inventory, resources: Sequence[Resource], options: CdiOptions, *, sysfs_root: str = "/sys"
) -> CdiWriteResult:
    """Write the spec for the advertised devices into `options.spec_dir`, replacing the old
    one atomically, and remove our spec files that no longer have devices. CdiSpecError when
    the driver cannot be found or a file cannot be written or removed."""
    if not any(r.devices for r in resources):
        removed = save_spec_files(options.spec_dir, {})[1]
        return CdiWriteResult(path=None, device_names=0, removed=removed, warnings=(), changed=bool(removed))
    try:
        facts = find_host_facts(inventory, options, sysfs_root=sysfs_root)
    except DriverNotFoundError as exc:
        raise CdiDriverMissing(f"cannot build the CDI spec: {exc}") from None
    plan = build_spec(inventory, resources, options, facts)
    assert plan.spec is not None  # there are devices
    written, removed = save_spec_files(options.spec_dir, {plan.spec.file_name: plan.spec.to_json()})
    return CdiWriteResult(
        path=os.path.join(options.spec_dir, plan.spec.file_name),
        device_names=len(plan.spec.devices),
        removed=removed,
        warnings=plan.warnings,
        changed=bool(written or removed),
    )


def save_spec_files(
    spec_dir: str, documents: Mapping[str, Mapping[str, object]]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Write each document as JSON to `spec_dir`/<name> (mode 0644) unless the file already
    holds it, and remove the other spec files we own (OWNED_SPEC_FILES) and temporary files we
    left behind. Returns (written paths, removed paths)."""
    try:
        os.makedirs(spec_dir, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise _error("create the CDI spec directory", spec_dir, exc) from None
    written = []
    for name, document in documents.items():
        path = os.path.join(spec_dir, name)
        data = (json.dumps(document, indent=2) + "\n").encode()
        if _holds(path, data):
            continue
        _write_atomically(path, data)
        written.append(path)
    stale = [n for n in OWNED_SPEC_FILES if n not in documents]
    stale += [n for n in _list(spec_dir) if n.startswith(_TEMP_PREFIXES) and n.endswith(_TEMP_SUFFIX)]
    removed = []
    for name in stale:
        path = os.path.join(spec_dir, name)
        try:
            os.remove(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _error("remove the stale CDI spec", path, exc) from None
        removed.append(path)
    return tuple(written), tuple(removed)


_TEMP_SUFFIX = ".tmp"
_TEMP_PREFIXES = tuple(f".{n}." for n in OWNED_SPEC_FILES)


def _write_atomically(path: str, data: bytes) -> None:
    """A temporary file beside `path`, synced, then renamed over it: readers see the old file
    or the new one, never a part; on failure the old file stays as it was."""
    directory, name = os.path.split(path)
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=_TEMP_SUFFIX, dir=directory)
    except OSError as exc:
        raise _error("write the CDI spec", path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), SPEC_FILE_MODE)
            os.fsync(f.fileno())
        os.replace(temp, path)
        _sync_directory(directory)
    except OSError as exc:
        _remove_quietly(temp)
        raise _error("write the CDI spec", path, exc) from None
    except BaseException:
        _remove_quietly(temp)
        raise


def _sync_directory(directory: str) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _holds(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data and os.fstat(f.fileno()).st_mode & 0o777 == SPEC_FILE_MODE
    except OSError:
        return False


def _list(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError as exc:
        log.warning("cannot remove the temporary file %s: %s", path, exc.strerror or exc)


def _error(action: str, path: str, exc: OSError) -> CdiSpecError:
    directory = path if action.endswith("directory") else os.path.dirname(path)
    return CdiSpecError(
        f"cannot {action} {path}: {exc.strerror or exc}; the CDI spec directory {directory} must be "
        "writable by nvplugin (mount the host's CDI spec directory read-write into its container, "
        "or set the CDI spec directory to one the container runtime reads and nvplugin can write)"
    )
