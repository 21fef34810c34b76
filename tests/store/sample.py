"""Sample data for the store tests: a fixed clock and short ways to make tokens and devices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controlplane.store import DeviceRow, JoinTokenRow, Store

# A fixed instant with microseconds, so a round trip that loses precision is caught.
T0 = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
FLEET = "lab"


def join_token(store: Store, token_id: str, *, now: datetime = T0, ttl: timedelta = timedelta(hours=1)) -> JoinTokenRow:
    """Create an unused join token for ``FLEET`` that expires ``ttl`` after ``now``."""
    return store.create_join_token(
        token_id=token_id,
        fleet=FLEET,
        secret_sha256="5e" * 32,
        labels={"site": "berlin"},
        publisher_key_ids=["pub-1", "pub-2"],
        expires_at=now + ttl,
        now=now,
    )


def enroll(store: Store, token_id: str, device_id: str, *, now: datetime = T0, fleet: str = FLEET) -> DeviceRow:
    """Enroll ``device_id`` with the join token ``token_id``."""
    return store.enroll_device(
        token_id=token_id,
        device_id=device_id,
        fleet=fleet,
        labels={"site": "berlin"},
        certificate_sha256="c3" * 32,
        certificate_serial="123456789012345678901234567890",
        facts={"arch": "aarch64"},
        agent_version="0.1.0",
        now=now,
    )


def device(store: Store, device_id: str, *, now: datetime = T0, fleet: str = FLEET) -> DeviceRow:
    """A freshly enrolled device, with its own join token ``jt-<device_id>``."""
    join_token(store, f"jt-{device_id}", now=now)
    return enroll(store, f"jt-{device_id}", device_id, now=now, fleet=fleet)
