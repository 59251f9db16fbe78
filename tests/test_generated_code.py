"""The committed betterproto2 code must be exactly what the compiler makes of protos/api.proto."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True
    )
    committed = ROOT / "nvplugin" / "api"
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    present = sorted(
        p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert generated == present, "files differ: run `python scripts/gen_proto.py` (or `tox -e regen`)"
    drifted = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, committed / p, shallow=False)]
    assert not drifted, f"{drifted} drifted from protos/api.proto: run `python scripts/gen_proto.py`"


def test_wire_names_match_the_kubelet() -> None:
    from nvplugin.api import v1beta1 as api

    assert set(api.DevicePluginBase().__mapping__()) == {
        "/v1beta1.DevicePlugin/GetDevicePluginOptions",
        "/v1beta1.DevicePlugin/ListAndWatch",
        "/v1beta1.DevicePlugin/GetPreferredAllocation",
        "/v1beta1.DevicePlugin/Allocate",
        "/v1beta1.DevicePlugin/PreStartContainer",
    }
    assert set(api.RegistrationBase().__mapping__()) == {"/v1beta1.Registration/Register"}
    # Field numbers on the wire: Device{ID=1, health=2}, ContainerAllocateResponse.cdi_devices=5.
    assert bytes(api.Device(id="a", health="Healthy")) == b"\n\x01a\x12\x07Healthy"
    assert bytes(api.ContainerAllocateResponse(cdi_devices=[api.CdiDevice(name="x")])) == b"*\x03\n\x01x"
