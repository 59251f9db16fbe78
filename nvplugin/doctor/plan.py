"""The effective configuration, and what the agent would advertise with it on these GPUs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nvplugin.configload import LoadedConfig, load
from nvplugin.core.config import Config, ConfigError, resolve
from nvplugin.core.inventory import Inventory
from nvplugin.core.resources import ResourcePlan, plan_resources
from nvplugin.doctor.result import FAIL, PASS, SKIP, WARN, CheckResult


@dataclass(frozen=True, slots=True)
class ConfigFacts:
    # What the checks run with: the effective config, or the best that could be had.
    config: Config
    loaded: LoadedConfig | None = None
    error: str | None = None


def read_config(flags: Mapping[str, object], env: Mapping[str, str]) -> ConfigFacts:
    """`nvplugin run`'s config (flag > env > file). On an error, the checks go on with the flags
    alone, else the defaults, so one bad setting does not hide everything else."""
    try:
        loaded = load(flags, env)
    except ConfigError as exc:
        try:
            fallback = resolve({k: v for k, v in flags.items() if k != "config_file"}, {})
        except ConfigError:
            fallback = Config()
        return ConfigFacts(fallback, error=str(exc))
    return ConfigFacts(loaded.config, loaded)


def check_config(facts: ConfigFacts) -> CheckResult:
    name = "config"
    if facts.loaded is None:
        return CheckResult(
            name,
            FAIL,
            "the configuration is invalid: the agent would exit with code 2",
            (facts.error or "",),
            "fix the setting named above (flag, environment variable or config file); "
            "nvplugin check-config FILE validates a config file; the other checks ran with the defaults",
        )
    config = facts.config
    details = [
        f"config file: {config.config_file or 'none'}",
        f"mig-strategy {config.mig_strategy}, device-list-strategy {','.join(config.device_list_strategy)}, "
        f"device-id-strategy {config.device_id_strategy}, fail-on-init-error {str(config.fail_on_init_error).lower()}",
        f"kubelet socket {config.kubelet_socket}, driver root {config.nvidia_driver_root}, dev root {config.device_root}",
    ]
    if facts.loaded.warnings:
        return CheckResult(
            name,
            WARN,
            f"valid, but {len(facts.loaded.warnings)} setting(s) are ignored",
            tuple(details) + facts.loaded.warnings,
            "remove or correct the settings named above",
        )
    return CheckResult(name, PASS, "valid", tuple(details))


@dataclass(frozen=True, slots=True)
class PlanFacts:
    plan: ResourcePlan | None = None
    # The MIG or sharing configuration that cannot be applied to these GPUs.
    error: str | None = None


def make_plan(inventory: Inventory | None, config: Config) -> PlanFacts:
    if inventory is None:
        return PlanFacts()
    try:
        return PlanFacts(plan_resources(inventory, config))
    except ConfigError as exc:  # MigConfigurationError included
        return PlanFacts(error=str(exc))


def check_resources(facts: PlanFacts, inventory: Inventory | None, config: Config) -> CheckResult:
    name = "resources"
    if inventory is None:
        return CheckResult(name, SKIP, "the GPUs are unknown (see nvml): nothing to plan")
    if facts.plan is None:
        return CheckResult(
            name,
            FAIL,
            f"mig-strategy {config.mig_strategy} and the sharing config do not fit these GPUs",
            (facts.error or "",),
            "change mig-strategy (none, single, mixed) or the GPUs' MIG layout (nvidia-smi mig), or the "
            "config file's sharing section, as the message says; the agent refuses to start as it is",
        )
    details = []
    for resource in facts.plan.resources:
        shared = f", {resource.replicas} replicas per device" if resource.replicas > 1 else ""
        renamed = f", renamed from {resource.renamed_from}" if resource.renamed_from else ""
        details.append(f"{resource.name}: {len(resource.devices)} device(s){shared}{renamed}")
    warnings = list(facts.plan.warnings)
    if config.mig_strategy == "none":
        warnings += [
            f"GPU {g.index} ({g.uuid}) has MIG enabled but mig-strategy is none: it is advertised whole, "
            "and a container given it can run no CUDA work"
            for g in inventory.gpus
            if g.mig_enabled
        ]
    advertised = ", ".join(f"{r.name} x{len(r.devices)}" for r in facts.plan.resources) or "nothing"
    if warnings:
        return CheckResult(
            name,
            WARN,
            f"advertises {advertised}, with {len(warnings)} warning(s)",
            tuple(details + warnings),
            "use mig-strategy single or mixed for MIG-enabled GPUs (or disable MIG on them); "
            "create MIG devices on MIG-enabled GPUs that have none; name existing resources in sharing",
        )
    return CheckResult(name, PASS, f"advertises {advertised}", tuple(details))
