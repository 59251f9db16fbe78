"""The pure XID policy: NVIDIA's env semantics, the config section, the catalog and recovery."""

from __future__ import annotations

import pytest

from nvplugin.core.xid import (
    APPLICATION_XIDS,
    DEFAULT_POLICY,
    RECOVERY_GPU_RESET,
    RECOVERY_NODE_REBOOT,
    RECOVERY_NONE,
    XID_ACTIONS,
    Action,
    HealthConfigError,
    HealthPolicy,
    ProbeResult,
    RecoveryPolicy,
    after_probe,
    apply_env,
    merge_fault,
    new_fault,
    parse_duration,
    parse_health_section,
    parse_xid_list,
    resolve_health_policy,
)

# --- defaults and NVIDIA's environment variables


def test_defaults_ignore_exactly_nvidias_application_errors() -> None:
    assert frozenset({13, 31, 43, 45, 68, 109}) == APPLICATION_XIDS
    for xid in APPLICATION_XIDS:
        assert DEFAULT_POLICY.is_ignored(xid)
    for xid in (8, 48, 63, 79, 94, 95, 119, 999):
        assert not DEFAULT_POLICY.is_ignored(xid)
    assert DEFAULT_POLICY.watching


@pytest.mark.parametrize("value", ["all", "xids", "ALL", " xids ", "48,all", "13, XIDS ,79"])
def test_disable_all_or_xids_anywhere_disables_every_xid(value: str) -> None:
    policy, warnings = apply_env(DEFAULT_POLICY, {"DP_DISABLE_HEALTHCHECKS": value})
    assert not policy.watching
    assert all(policy.is_ignored(x) for x in (8, 48, 79))
    assert warnings == ()


def test_disable_numbers_add_to_the_application_errors() -> None:
    policy, _ = apply_env(DEFAULT_POLICY, {"DP_DISABLE_HEALTHCHECKS": "48, 79,,"})
    assert policy.is_ignored(48) and policy.is_ignored(79) and policy.is_ignored(13)
    assert not policy.is_ignored(95)


def test_malformed_entries_are_skipped_with_a_warning() -> None:
    policy, warnings = apply_env(DEFAULT_POLICY, {"DP_DISABLE_HEALTHCHECKS": "48,x1,-3"})
    assert policy.is_ignored(48)
    assert len(warnings) == 2
    assert "DP_DISABLE_HEALTHCHECKS" in warnings[0] and "'x1'" in warnings[0]


def test_enable_overrides_the_ignore_list() -> None:
    policy, _ = apply_env(
        DEFAULT_POLICY, {"DP_DISABLE_HEALTHCHECKS": "48", "DP_ENABLE_HEALTHCHECKS": "48,13"}
    )
    assert not policy.is_ignored(48) and not policy.is_ignored(13)
    assert policy.is_ignored(31)


def test_enable_all_checks_application_errors_too() -> None:
    policy, _ = apply_env(DEFAULT_POLICY, {"DP_ENABLE_HEALTHCHECKS": "all"})
    assert not any(policy.is_ignored(x) for x in APPLICATION_XIDS)


def test_enable_all_wins_over_disable_all() -> None:
    env = {"DP_DISABLE_HEALTHCHECKS": "all", "DP_ENABLE_HEALTHCHECKS": "all"}
    policy, _ = apply_env(DEFAULT_POLICY, env)
    assert policy.watching and not policy.is_ignored(79) and not policy.is_ignored(13)


def test_disable_all_with_some_enabled_checks_only_those() -> None:
    # NVIDIA documents this; its v0.17 code disables everything instead (docs/xid.md).
    env = {"DP_DISABLE_HEALTHCHECKS": "all", "DP_ENABLE_HEALTHCHECKS": "79"}
    policy, _ = apply_env(DEFAULT_POLICY, env)
    assert policy.watching
    assert not policy.is_ignored(79)
    assert policy.is_ignored(48) and policy.is_ignored(13)


def test_empty_variables_change_nothing() -> None:
    policy, _ = apply_env(DEFAULT_POLICY, {"DP_DISABLE_HEALTHCHECKS": "", "DP_ENABLE_HEALTHCHECKS": " "})
    assert policy == DEFAULT_POLICY


def test_parse_xid_list() -> None:
    assert parse_xid_list("1, 2,3").xids == frozenset({1, 2, 3})
    assert parse_xid_list("").xids == frozenset()
    assert parse_xid_list("Xids").everything


# --- the config file section


def test_health_section_full() -> None:
    policy = parse_health_section(
        {
            "disabled": False,
            "ignoredXids": [48],
            "checkedXids": [13],
            "xidActions": {"74": "reboot", 8: "reset-gpu"},
            "recovery": {"enabled": True, "quietPeriod": "2m", "probeInterval": "500ms"},
        }
    )
    assert policy.is_ignored(48) and policy.is_ignored(31) and not policy.is_ignored(13)
    assert policy.action(74) is Action.REBOOT and policy.action(8) is Action.RESET_GPU
    assert policy.action(79) is Action.REBOOT
    assert policy.recovery == RecoveryPolicy(True, 120.0, 0.5)


def test_health_section_empty_is_the_default() -> None:
    assert parse_health_section(None) == DEFAULT_POLICY
    assert parse_health_section({}) == DEFAULT_POLICY


def test_health_section_disabled_and_checked_all() -> None:
    assert not parse_health_section({"disabled": True}).watching
    assert parse_health_section({"checkedXids": "all"}).check_all


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "health: expected a mapping, got list"),
        ({"ignored": [1]}, "health: unknown key(s) ignored; expected some of disabled"),
        ({"disabled": "yes"}, "health.disabled: expected true or false, got 'yes'"),
        ({"ignoredXids": ["x"]}, "health.ignoredXids: expected XID numbers, got 'x'"),
        ({"ignoredXids": 5}, "health.ignoredXids: expected a list of XID numbers, got 5"),
        ({"checkedXids": {"a": 1}}, "health.checkedXids: expected a list of XID numbers or all"),
        ({"xidActions": {"74": "panic"}}, "health.xidActions.74: expected one of none, restart-app"),
        ({"xidActions": {"x": "none"}}, "health.xidActions: expected XID numbers as keys, got 'x'"),
        ({"recovery": {"quietPeriod": "soon"}}, "health.recovery.quietPeriod: expected a duration"),
        ({"recovery": {"quietPeriod": -1}}, "health.recovery.quietPeriod: expected a duration of 0 or more"),
        ({"recovery": {"probeInterval": 0}}, "health.recovery.probeInterval: expected a duration above 0"),
        ({"recovery": {"every": 1}}, "health.recovery: unknown key(s) every"),
        ({"recovery": True}, "health.recovery: expected a mapping, got bool"),
    ],
)
def test_health_section_errors_name_the_field(data: object, message: str) -> None:
    with pytest.raises(HealthConfigError) as info:
        parse_health_section(data)
    assert message in str(info.value)


def test_env_overrides_file() -> None:
    policy, _ = resolve_health_policy({"DP_ENABLE_HEALTHCHECKS": "48"}, {"ignoredXids": [48, 79]}, "cfg.yaml")
    assert not policy.is_ignored(48) and policy.is_ignored(79)
    with pytest.raises(HealthConfigError, match=r"cfg.yaml: health.disabled"):
        resolve_health_policy({}, {"disabled": 3}, "cfg.yaml")


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(60, 60.0), (1.5, 1.5), ("60s", 60.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("7", 7.0)],
)
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration("d", raw) == seconds


@pytest.mark.parametrize("raw", [True, "1d", "", "nan", "inf"])
def test_bad_durations(raw: object) -> None:
    with pytest.raises(HealthConfigError, match=r"^d: expected a duration"):
        parse_duration("d", raw)


def test_describe_says_what_is_checked() -> None:
    assert "ignoring XIDs 13,31,43,45,68,109" in DEFAULT_POLICY.describe()
    assert "disabled" in HealthPolicy(all_disabled=True).describe()
    assert "only XIDs 79" in HealthPolicy(all_disabled=True, checked_xids=frozenset({79})).describe()


# --- the catalog


@pytest.mark.parametrize(
    ("xid", "action"),
    [
        (13, Action.RESTART_APP),
        (31, Action.RESTART_APP),
        (43, Action.NONE),
        (48, Action.RESET_GPU),
        (63, Action.NONE),
        (74, Action.RESET_GPU),
        (79, Action.REBOOT),
        (94, Action.RESTART_APP),
        (95, Action.RESET_GPU),
        (109, Action.RESET_GPU),
        (119, Action.RESET_GPU),
        (154, Action.NONE),
        (12345, Action.RESET_GPU),  # unknown: not trusted again without a reset
    ],
)
def test_catalog_actions(xid: int, action: Action) -> None:
    assert DEFAULT_POLICY.action(xid) is action


def test_catalog_has_no_duplicate_classification() -> None:
    assert len(XID_ACTIONS) > 100


# --- faults and recovery

REC = RecoveryPolicy(enabled=True, quiet_period_s=10.0, probe_interval_s=1.0)
OK = ProbeResult(ok=True, recovery_action=RECOVERY_NONE)


def test_restart_app_fault_recovers_after_quiet_period_and_good_probe() -> None:
    fault = new_fault(Action.RESTART_APP, "XID 8", 8, now=100.0)
    assert after_probe(fault, OK, 105.0, REC) == fault
    assert after_probe(fault, ProbeResult(ok=False, error="x"), 111.0, REC) == fault
    assert after_probe(fault, OK, 110.0, REC) is None


def test_new_event_restarts_the_quiet_period_and_worse_action_wins() -> None:
    fault = new_fault(Action.RESTART_APP, "XID 8", 8, now=100.0)
    fault = merge_fault(fault, Action.RESTART_APP, "XID 8", 8, now=108.0)
    assert after_probe(fault, OK, 111.0, REC) is not None
    worse = merge_fault(fault, Action.REBOOT, "XID 79", 79, now=109.0)
    assert worse.action is Action.REBOOT and worse.xid == 79 and worse.since == 100.0
    milder = merge_fault(worse, Action.NONE, "XID 63", 63, now=110.0)
    assert milder.action is Action.REBOOT and milder.xid == 79


def test_reset_fault_needs_reset_evidence() -> None:
    fault = new_fault(Action.RESET_GPU, "XID 95", 95, now=0.0)
    # quiet period alone is not enough
    assert after_probe(fault, OK, 1000.0, REC) == fault
    pending = after_probe(fault, ProbeResult(ok=True, recovery_action=RECOVERY_GPU_RESET), 1.0, REC)
    assert pending is not None and pending.reset_requested
    assert after_probe(pending, OK, 2.0, REC) is None
    # a driver without the recovery field gives no evidence
    assert after_probe(pending, ProbeResult(ok=True, recovery_action=None), 2.0, REC) == pending


def test_reboot_faults_never_recover() -> None:
    fault = new_fault(Action.REBOOT, "XID 79", 79, now=0.0)
    assert after_probe(fault, OK, 1e9, REC) == fault


def test_lost_gpu_or_driver_reboot_request_escalates() -> None:
    fault = new_fault(Action.RESTART_APP, "XID 8", 8, now=0.0)
    lost = after_probe(fault, ProbeResult(ok=False, lost=True, error="gone"), 1.0, REC)
    assert lost is not None and lost.action is Action.REBOOT and "lost" in lost.reason
    reboot = after_probe(fault, ProbeResult(ok=True, recovery_action=RECOVERY_NODE_REBOOT), 1.0, REC)
    assert reboot is not None and reboot.action is Action.REBOOT


def test_recovery_disabled_keeps_faults() -> None:
    fault = new_fault(Action.RESTART_APP, "XID 8", 8, now=0.0)
    assert after_probe(fault, OK, 1e9, RecoveryPolicy(enabled=False)) == fault


def test_docs_table_matches_the_code() -> None:
    """docs/xid.md lists the classification; it must say what the code does."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "xid.md").read_text()
    documented: dict[int, Action] = {}
    for action in Action:
        row = re.search(rf"^\| {action.value} \| ([0-9, \u2013]+)(?:,| \|)", text, re.MULTILINE)
        assert row, f"no row for {action.value}"
        for part in row.group(1).split(","):
            low, _, high = part.strip().partition("\u2013")  # en dash
            for xid in range(int(low), int(high or low) + 1):
                documented[xid] = action
    assert documented == dict(XID_ACTIONS)
