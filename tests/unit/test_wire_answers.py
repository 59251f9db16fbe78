"""The hand encoders give exactly betterproto2's bytes for the Allocate and
GetPreferredAllocation answers, whatever they hold (empty strings, maps, every field)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nvplugin.api import v1beta1
from nvplugin.core.allocation import ContainerAllocation, DeviceSpec, Mount
from nvplugin.core.wire import encode_allocate_response, encode_preferred_response

text = st.text(max_size=40)
mounts = st.builds(Mount, container_path=text, host_path=text, read_only=st.booleans())
specs = st.builds(DeviceSpec, container_path=text, host_path=text, permissions=text)
allocations = st.builds(
    ContainerAllocation,
    envs=st.dictionaries(text, text, max_size=4),
    mounts=st.lists(mounts, max_size=3).map(tuple),
    devices=st.lists(specs, max_size=3).map(tuple),
    annotations=st.dictionaries(text, text, max_size=3),
    cdi_devices=st.lists(text, max_size=3).map(tuple),
)


def reference_allocation(a: ContainerAllocation) -> v1beta1.ContainerAllocateResponse:
    return v1beta1.ContainerAllocateResponse(
        envs=dict(a.envs),
        mounts=[
            v1beta1.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
            for m in a.mounts
        ],
        devices=[
            v1beta1.DeviceSpec(
                container_path=d.container_path, host_path=d.host_path, permissions=d.permissions
            )
            for d in a.devices
        ],
        annotations=dict(a.annotations),
        cdi_devices=[v1beta1.CdiDevice(name=n) for n in a.cdi_devices],
    )


@given(st.lists(allocations, max_size=3))
def test_allocate_answers_match_betterproto_bytes(answers: list[ContainerAllocation]) -> None:
    reference = v1beta1.AllocateResponse(container_responses=[reference_allocation(a) for a in answers])
    assert encode_allocate_response(answers) == bytes(reference)


@given(st.lists(st.lists(text, max_size=5), max_size=3))
def test_preferred_answers_match_betterproto_bytes(choices: list[list[str]]) -> None:
    reference = v1beta1.PreferredAllocationResponse(
        container_responses=[v1beta1.ContainerPreferredAllocationResponse(device_i_ds=ids) for ids in choices]
    )
    assert encode_preferred_response(choices) == bytes(reference)
