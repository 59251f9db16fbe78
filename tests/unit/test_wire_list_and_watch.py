"""The hand encoder gives exactly betterproto2's bytes for ListAndWatchResponse."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nvplugin.api import v1beta1
from nvplugin.core.resources import AdvertisedDevice, build_resources, device_health
from nvplugin.core.wire import encode_list_and_watch, varint
from tests.unit.mig_layouts import config, inventory, sharing


def reference(devices, unhealthy) -> bytes:
    return bytes(
        v1beta1.ListAndWatchResponse(
            devices=[
                v1beta1.Device(
                    id=d.id,
                    health=device_health(d, unhealthy),
                    topology=v1beta1.TopologyInfo(nodes=[v1beta1.NumaNode(id=d.numa_node)])
                    if d.numa_node is not None
                    else None,
                )
                for d in devices
            ]
        )
    )


def test_896_replicas_match_betterproto_bytes() -> None:
    inv = inventory("mig-single-8gpu")
    (gpu,) = build_resources(inv, config(mig_strategy="single", sharing=sharing(("nvidia.com/gpu", 16))))
    unhealthy = {inv.gpus[2].mig_devices[1].uuid: "XID 48", inv.gpus[7].uuid: "lost"}
    encoded = encode_list_and_watch(gpu.devices, unhealthy)
    assert encoded == reference(gpu.devices, unhealthy)
    decoded = v1beta1.ListAndWatchResponse.parse(encoded)
    assert len(decoded.devices) == 896
    assert sum(d.health == "Unhealthy" for d in decoded.devices) == 16 + 7 * 16
    assert {d.topology.nodes[0].id for d in decoded.devices} == {0, 1}


def test_empty_list() -> None:
    assert encode_list_and_watch([], {}) == reference([], {}) == b""


@given(
    st.lists(
        st.tuples(
            st.text(min_size=0, max_size=80),
            st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
            st.booleans(),
        ),
        max_size=20,
    )
)
def test_any_devices_match_betterproto_bytes(items) -> None:
    devices = [
        AdvertisedDevice(id=i, uuid=f"u{n}", index=str(n), gpu_uuid=f"g{n}", numa_node=numa, device_nodes=())
        for n, (i, numa, _) in enumerate(items)
    ]
    unhealthy = {f"u{n}": "sick" for n, (_, _, sick) in enumerate(items) if sick}
    assert encode_list_and_watch(devices, unhealthy) == reference(devices, unhealthy)


def test_varint() -> None:
    assert varint(0) == b"\x00"
    assert varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"
