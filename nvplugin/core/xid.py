"""XID health policy: which NVML events make a device Unhealthy, and when it may come back.

Pure: no I/O, no clocks (callers pass `now`), no logging (problems are returned as text).

Three layers, highest precedence first, as NVIDIA's plugin reads them:
  * `DP_DISABLE_HEALTHCHECKS` / `DP_ENABLE_HEALTHCHECKS` (NVIDIA's exact list syntax),
  * the config file's `health:` section (`parse_health_section`),
  * NVIDIA's defaults: every XID is critical except the application errors 13, 31, 43, 45,
    68 and 109.

Recovery is ours (NVIDIA never marks a device Healthy again). Each XID has a required action
taken from NVIDIA's Xid catalog (docs/xid.md says why each bucket lands where it does):
  none / restart-app  -> Healthy again after a quiet period and a successful NVML probe;
  reset-gpu           -> Healthy again once NVML shows the GPU was reset (its recovery action
                         went from a pending reset back to none) and a probe succeeds;
  reboot              -> stays Unhealthy for the life of the agent (a node reboot restarts it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from nvplugin.core.config import ConfigError


class Action(Enum):
    """What an XID needs before the device can be trusted again (ordered by severity)."""

    NONE = "none"
    RESTART_APP = "restart-app"
    RESET_GPU = "reset-gpu"
    REBOOT = "reboot"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Action.NONE: 0, Action.RESTART_APP: 1, Action.RESET_GPU: 2, Action.REBOOT: 3}

# NVIDIA's hard-coded application errors (k8s-device-plugin internal/rm/health.go).
APPLICATION_XIDS: frozenset[int] = frozenset({13, 31, 43, 45, 68, 109})

# NVML's recovery action field (NVML_FI_DEV_GET_GPU_RECOVERY_ACTION) values.
RECOVERY_NONE = 0
RECOVERY_GPU_RESET = 1
RECOVERY_NODE_REBOOT = 2
RECOVERY_DRAIN_P2P = 3
RECOVERY_DRAIN_AND_RESET = 4
RECOVERY_RECOVER_IMEX_DOMAIN = 5
RECOVERY_BUS_RESET = 6
RECOVERY_SYSTEM_REBOOT = 7
# What the driver asks for, in our four classes.
RECOVERY_ACTIONS: Mapping[int, Action] = {
    RECOVERY_NONE: Action.NONE,
    RECOVERY_GPU_RESET: Action.RESET_GPU,
    RECOVERY_NODE_REBOOT: Action.REBOOT,
    RECOVERY_DRAIN_P2P: Action.RESET_GPU,
    RECOVERY_DRAIN_AND_RESET: Action.RESET_GPU,
    RECOVERY_RECOVER_IMEX_DOMAIN: Action.RESET_GPU,
    RECOVERY_BUS_RESET: Action.RESET_GPU,
    RECOVERY_SYSTEM_REBOOT: Action.REBOOT,
}


def _table() -> dict[int, Action]:
    none, app, reset, reboot = Action.NONE, Action.RESTART_APP, Action.RESET_GPU, Action.REBOOT
    table: dict[int, Action] = {}

    def put(action: Action, *xids: int) -> None:
        for xid in xids:
            table[xid] = action

    # Catalog bucket RESTART_APP (plus WORKFLOW_XID_45 and CHECK_UVM: the application's state).
    put(app, 8, 11, 13, 25, 31, 32, 39, 40, 41, 45, 60, 68, 69, 70, 71, 72, 75, 76, 77, 80)
    put(app, 82, 83, 84, 85, 86, 88, 89, 94, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105)
    put(app, *range(126, 136), 139, 159)
    # Catalog bucket IGNORE, XID 154 (the recovery action itself, read through NVML) and the
    # informational power-smoothing notices.
    put(none, 37, 38, 43, 44, 63, 66, 67, 92, 93, 106, 107, 121, 137, 141, 152, 153, 154)
    put(none, 157, 160, 161, 162, 163, 164)
    # Catalog bucket RESET_GPU, and the workflows that end in a reset: XID 48 (DBE: reset to
    # remap the row), NVLink 74 and 144-150.
    put(reset, 46, 48, 62, 64, 74, 95, 109, 110, 119, 120, 136, 140, 143, 155, 156, 158)
    put(reset, *range(144, 151), 166, 168, 169, 170, 171, 172)
    # Catalog buckets RESTART_BM / RESTART_VM, and the ones that need a person at the machine
    # (CONTACT_SUPPORT, CHECK_MECHANICALS, UPDATE_SWFW): never recovered automatically.
    put(reboot, 54, 78, 79, 142, 151, 165, 167)
    return table


# XID -> required action. XIDs not listed are treated as reset-gpu (see `action_for`).
XID_ACTIONS: Mapping[int, Action] = _table()
UNKNOWN_XID_ACTION = Action.RESET_GPU


class HealthConfigError(ConfigError):
    """A health setting had a value the agent cannot use; the message names it. A ConfigError,
    so the CLI reports it like any other bad setting."""


@dataclass(frozen=True, slots=True)
class RecoveryPolicy:
    enabled: bool = True
    # Seconds without a new critical event before a restart-app class fault may clear.
    quiet_period_s: float = 60.0
    # Seconds between NVML probes of faulted devices (no probing while none is faulted).
    probe_interval_s: float = 5.0


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    # Every XID ignored unless listed in checked_xids (DP_DISABLE_HEALTHCHECKS=all|xids).
    all_disabled: bool = False
    # Ignored XIDs: NVIDIA's application errors plus any the user adds.
    ignored_xids: frozenset[int] = APPLICATION_XIDS
    # XIDs checked even when ignored (DP_ENABLE_HEALTHCHECKS).
    checked_xids: frozenset[int] = frozenset()
    # DP_ENABLE_HEALTHCHECKS=all: every XID is checked, application errors included.
    check_all: bool = False
    # User overrides of the catalog's action for single XIDs.
    xid_actions: Mapping[int, Action] = field(default_factory=dict)
    recovery: RecoveryPolicy = field(default_factory=RecoveryPolicy)

    @property
    def watching(self) -> bool:
        """False when no XID can ever be acted on: the watcher need not start."""
        return self.check_all or not self.all_disabled or bool(self.checked_xids)

    def is_ignored(self, xid: int) -> bool:
        if self.check_all or xid in self.checked_xids:
            return False
        return self.all_disabled or xid in self.ignored_xids

    def action(self, xid: int) -> Action:
        return self.xid_actions.get(xid) or action_for(xid)

    def describe(self) -> str:
        """One line for the startup log."""
        if not self.watching:
            return "XID health checks disabled"
        if self.check_all:
            checks = "every XID is checked"
        elif self.all_disabled:
            checks = f"only XIDs {_ids(self.checked_xids)} are checked"
        else:
            ignored = self.ignored_xids - self.checked_xids
            checks = f"ignoring XIDs {_ids(ignored)}" if ignored else "every XID is checked"
        rec = self.recovery
        recovery = (
            f"recovery after {rec.quiet_period_s:g}s quiet (probe every {rec.probe_interval_s:g}s)"
            if rec.enabled
            else "no automatic recovery"
        )
        return f"XID health checks on: {checks}; {recovery}"


def _ids(xids: frozenset[int]) -> str:
    return ",".join(str(x) for x in sorted(xids)) or "none"


def action_for(xid: int) -> Action:
    return XID_ACTIONS.get(xid, UNKNOWN_XID_ACTION)


DEFAULT_POLICY = HealthPolicy()

# --- NVIDIA's environment variables

ENV_DISABLE = "DP_DISABLE_HEALTHCHECKS"
ENV_ENABLE = "DP_ENABLE_HEALTHCHECKS"


@dataclass(frozen=True, slots=True)
class XidList:
    """One parsed DP_*_HEALTHCHECKS value: `all` (or `xids`), or a set of XIDs."""

    everything: bool
    xids: frozenset[int]
    # Entries that were neither a number nor all/xids: NVIDIA skips them, we say so.
    malformed: tuple[str, ...] = ()


def parse_xid_list(raw: str) -> XidList:
    """NVIDIA's syntax: lower-cased, comma-separated, blanks skipped; `all` or `xids` anywhere
    means every XID (the other entries are then dropped); malformed entries are skipped."""
    xids: set[int] = set()
    malformed: list[str] = []
    for item in raw.lower().split(","):
        text = item.strip()
        if text in ("all", "xids"):
            return XidList(everything=True, xids=frozenset())
        if not text:
            continue
        if text.isdigit():
            xids.add(int(text))
        else:
            malformed.append(text)
    return XidList(everything=False, xids=frozenset(xids), malformed=tuple(malformed))


def apply_env(policy: HealthPolicy, env: Mapping[str, str]) -> tuple[HealthPolicy, tuple[str, ...]]:
    """Layer DP_DISABLE_HEALTHCHECKS / DP_ENABLE_HEALTHCHECKS over `policy` (from the config file
    or the defaults). Returns the policy and warnings for malformed entries."""
    warnings: list[str] = []
    disable_raw = env.get(ENV_DISABLE, "")
    if disable_raw.strip():
        disabled = parse_xid_list(disable_raw)
        warnings += _malformed(ENV_DISABLE, disabled)
        if disabled.everything:
            policy = replace(policy, all_disabled=True)
        else:
            # Additions to the ignore list, like NVIDIA: the application errors stay ignored.
            policy = replace(policy, ignored_xids=policy.ignored_xids | disabled.xids)
    enable_raw = env.get(ENV_ENABLE, "")
    if enable_raw.strip():
        enabled = parse_xid_list(enable_raw)
        warnings += _malformed(ENV_ENABLE, enabled)
        if enabled.everything:
            policy = replace(policy, check_all=True)
        else:
            policy = replace(policy, checked_xids=policy.checked_xids | enabled.xids)
    return policy, tuple(warnings)


def _malformed(name: str, parsed: XidList) -> list[str]:
    return [
        f"environment variable {name}: ignoring {text!r}: expected an XID number, all or xids"
        for text in parsed.malformed
    ]


# --- the config file's `health:` section

_HEALTH_KEYS = ("disabled", "ignoredXids", "checkedXids", "xidActions", "recovery")
_RECOVERY_KEYS = ("enabled", "quietPeriod", "probeInterval")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(where: str, raw: object) -> float:
    """Seconds from 60, 1.5, "60s", "500ms", "2m" or "1h" (Go-style single unit)."""
    if isinstance(raw, bool):
        raise HealthConfigError(f"{where}: expected a duration such as 60s or 500ms, got {raw!r}")
    if isinstance(raw, int | float):
        seconds = float(raw)
    else:
        text = str(raw).strip().lower()
        for unit in ("ms", "s", "m", "h"):
            number = text.removesuffix(unit)
            if number != text:
                break
        else:
            unit, number = "s", text
        try:
            seconds = float(number) * _DURATION_UNITS[unit]
        except ValueError:
            raise HealthConfigError(
                f"{where}: expected a duration such as 60s, 500ms or 2m, got {raw!r}"
            ) from None
    if not seconds >= 0 or seconds == float("inf"):
        raise HealthConfigError(f"{where}: expected a duration of 0 or more, got {raw!r}")
    return seconds


def _parse_bool(where: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    raise HealthConfigError(f"{where}: expected true or false, got {raw!r}")


def _parse_xids(where: str, raw: object, allow_all: bool) -> tuple[bool, frozenset[int]]:
    if allow_all and isinstance(raw, str) and raw.strip().lower() == "all":
        return True, frozenset()
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        expected = "a list of XID numbers" + (" or all" if allow_all else "")
        raise HealthConfigError(f"{where}: expected {expected}, got {raw!r}")
    xids: set[int] = set()
    for item in items:
        text = str(item).strip() if not isinstance(item, bool) else ""
        if not text.isdigit():
            raise HealthConfigError(f"{where}: expected XID numbers, got {item!r}")
        xids.add(int(text))
    return False, frozenset(xids)


def _parse_actions(where: str, raw: object) -> dict[int, Action]:
    if not isinstance(raw, dict):
        raise HealthConfigError(f"{where}: expected a mapping of XID to action, got {raw!r}")
    names = ", ".join(a.value for a in Action)
    actions: dict[int, Action] = {}
    for key, value in raw.items():
        text = str(key).strip()
        if isinstance(key, bool) or not text.isdigit():
            raise HealthConfigError(f"{where}: expected XID numbers as keys, got {key!r}")
        try:
            actions[int(text)] = Action(str(value).strip().lower())
        except ValueError:
            raise HealthConfigError(f"{where}.{text}: expected one of {names}, got {value!r}") from None
    return actions


def _check_keys(where: str, data: Mapping[str, object], allowed: tuple[str, ...]) -> None:
    unknown = sorted(str(k) for k in set(data) - set(allowed))
    if unknown:
        raise HealthConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(allowed)}"
        )


def parse_health_section(data: object, where: str = "health") -> HealthPolicy:
    """The policy from a config file's `health:` mapping (None or {} gives NVIDIA's defaults):

    health:
      disabled: false            # true: ignore every XID not in checkedXids
      ignoredXids: [48]          # ignored in addition to 13, 31, 43, 45, 68, 109
      checkedXids: [13] | all    # checked even when ignored
      xidActions: {"74": reboot} # override the catalog's required action
      recovery: {enabled: true, quietPeriod: 60s, probeInterval: 5s}
    """
    if data is None:
        return DEFAULT_POLICY
    if not isinstance(data, dict):
        raise HealthConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    _check_keys(where, data, _HEALTH_KEYS)
    policy = DEFAULT_POLICY
    if "disabled" in data:
        policy = replace(policy, all_disabled=_parse_bool(f"{where}.disabled", data["disabled"]))
    if data.get("ignoredXids") is not None:
        _, ignored = _parse_xids(f"{where}.ignoredXids", data["ignoredXids"], allow_all=False)
        policy = replace(policy, ignored_xids=APPLICATION_XIDS | ignored)
    if data.get("checkedXids") is not None:
        every, checked = _parse_xids(f"{where}.checkedXids", data["checkedXids"], allow_all=True)
        policy = replace(policy, check_all=every, checked_xids=checked)
    if data.get("xidActions") is not None:
        policy = replace(policy, xid_actions=_parse_actions(f"{where}.xidActions", data["xidActions"]))
    if data.get("recovery") is not None:
        policy = replace(policy, recovery=_parse_recovery(f"{where}.recovery", data["recovery"]))
    return policy


def _parse_recovery(where: str, raw: object) -> RecoveryPolicy:
    if not isinstance(raw, dict):
        raise HealthConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    _check_keys(where, raw, _RECOVERY_KEYS)
    recovery = RecoveryPolicy()
    if "enabled" in raw:
        recovery = replace(recovery, enabled=_parse_bool(f"{where}.enabled", raw["enabled"]))
    if "quietPeriod" in raw:
        recovery = replace(
            recovery, quiet_period_s=parse_duration(f"{where}.quietPeriod", raw["quietPeriod"])
        )
    if "probeInterval" in raw:
        interval = parse_duration(f"{where}.probeInterval", raw["probeInterval"])
        if interval <= 0:
            raise HealthConfigError(f"{where}.probeInterval: expected a duration above 0, got {interval:g}s")
        recovery = replace(recovery, probe_interval_s=interval)
    return recovery


def resolve_health_policy(
    env: Mapping[str, str], file_section: object = None, file_name: str = "config file"
) -> tuple[HealthPolicy, tuple[str, ...]]:
    """env > config file > NVIDIA's defaults. Raises HealthConfigError for a bad file section;
    returns warnings for malformed environment entries (NVIDIA skips those too)."""
    base = parse_health_section(file_section, f"{file_name}: health")
    return apply_env(base, env)


# --- faults and recovery


@dataclass(frozen=True, slots=True)
class Fault:
    """Why the watcher marked one device (a GPU or MIG UUID) Unhealthy."""

    action: Action
    reason: str
    xid: int | None
    # Monotonic seconds of the first and the latest critical event for this device.
    since: float
    last_event: float
    # NVML's recovery action asked for a reset at some point since the fault (reset evidence).
    reset_requested: bool = False


def new_fault(action: Action, reason: str, xid: int | None, now: float) -> Fault:
    return Fault(action=action, reason=reason, xid=xid, since=now, last_event=now)


def merge_fault(old: Fault, action: Action, reason: str, xid: int | None, now: float) -> Fault:
    """A new critical event on an already faulted device: the quiet period restarts and the more
    severe action wins (its reason and XID with it)."""
    if action.severity > old.action.severity:
        return replace(old, action=action, reason=reason, xid=xid, last_event=now)
    return replace(old, last_event=now)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one NVML probe of a GPU said. `recovery_action` is None where the driver lacks it."""

    ok: bool
    error: str | None = None
    lost: bool = False
    recovery_action: int | None = None


def after_probe(fault: Fault, probe: ProbeResult, now: float, recovery: RecoveryPolicy) -> Fault | None:
    """The fault after a probe of its GPU, or None when the device may be Healthy again."""
    if fault.action is Action.REBOOT:
        return fault
    if probe.lost:
        return replace(fault, action=Action.REBOOT, reason=f"{fault.reason}; then GPU lost: {probe.error}")
    requested = RECOVERY_ACTIONS.get(probe.recovery_action) if probe.recovery_action is not None else None
    if requested is Action.REBOOT:
        return replace(fault, action=Action.REBOOT, reason=f"{fault.reason}; driver asks for a reboot")
    if requested is Action.RESET_GPU:
        return replace(fault, reset_requested=True)
    if not probe.ok or not recovery.enabled:
        return fault
    if fault.action is Action.RESET_GPU:
        # Reset evidence: the driver asked for a reset and now asks for nothing.
        return None if fault.reset_requested and requested is Action.NONE else fault
    if now - fault.last_event >= recovery.quiet_period_s:
        return None
    return fault


def recovery_hint(fault: Fault) -> str:
    """What an operator must do, for the log line and the Unhealthy reason."""
    if fault.action is Action.REBOOT:
        return "needs a node reboot or service; stays Unhealthy"
    if fault.action is Action.RESET_GPU:
        return "Healthy again once the GPU is reset (nvidia-smi -r)"
    return "Healthy again after a quiet period"
