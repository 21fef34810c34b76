"""The admin API pages through large fleets without gaps or repeats, and bounds its page size."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from agent.enroll import enroll
from agent.facts import collect_facts
from protos.edgefleet.v1 import admin_pb2
from protos.join import parse_join_string


def test_device_list_pages_cover_the_fleet_exactly_once(cp, tmp_path):
    facts = collect_facts(data_dir=tmp_path, labels={})
    for i in range(5):
        join = parse_join_string(cp.join_string("lab" if i % 2 else "yard"))
        asyncio.run(enroll(join, data_dir=tmp_path / f"d{i}", device_id=f"dev-{i}", facts=facts))
    stub, meta, channel = cp.admin()
    seen, token, pages = [], "", 0
    with channel:
        while True:
            page = stub.ListDevices(admin_pb2.ListDevicesRequest(page_size=2, page_token=token), metadata=meta)
            seen += [d.device_id for d in page.devices]
            pages += 1
            token = page.next_page_token
            if not token:
                break
        lab = stub.ListDevices(admin_pb2.ListDevicesRequest(fleet="lab"), metadata=meta).devices
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListDevices(admin_pb2.ListDevicesRequest(page_size=100_000), metadata=meta)
    assert seen == [f"dev-{i}" for i in range(5)] and pages == 3
    assert [d.device_id for d in lab] == ["dev-1", "dev-3"]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
