"""The control plane's persistent store (SQLite or PostgreSQL), its rows and its errors.

Open it with ``Store.open(url)``; the schema is migrated to head on open. See ``store.py``
for the invariants and ``errors.py`` for what each error asks of the caller.
"""

from controlplane.store.errors import AlreadyExists, Conflict, NotFound, StoreError, StoreUnavailable
from controlplane.store.rows import (
    OPERATOR_ROLES,
    ClassRow,
    DesiredRow,
    DeviceEventRow,
    DeviceRow,
    DeviceStatusRow,
    HealthRow,
    JobRow,
    JoinTokenRow,
    LatencyRow,
    ModelBuildRow,
    OperatorTokenRow,
    PublisherKeyRow,
    ResourceSampleRow,
    RolloutRow,
)
from controlplane.store.store import Store

__all__ = [
    "OPERATOR_ROLES",
    "AlreadyExists",
    "ClassRow",
    "Conflict",
    "DesiredRow",
    "DeviceEventRow",
    "DeviceRow",
    "DeviceStatusRow",
    "HealthRow",
    "JobRow",
    "LatencyRow",
    "JoinTokenRow",
    "ModelBuildRow",
    "NotFound",
    "OperatorTokenRow",
    "PublisherKeyRow",
    "ResourceSampleRow",
    "RolloutRow",
    "Store",
    "StoreError",
    "StoreUnavailable",
]
