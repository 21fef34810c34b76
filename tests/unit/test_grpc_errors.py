"""Every error the control plane raises on purpose maps to a deliberate gRPC status code."""

from __future__ import annotations

import grpc
import pytest

from controlplane import blobs, errors
from controlplane.grpc_errors import STATUS_FOR, status_for
from controlplane.store import errors as store_errors
from protos.bundles import BundleError

FAMILIES = (errors.ControlPlaneError, store_errors.StoreError, blobs.BlobError, BundleError)


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_every_concrete_error_has_its_own_status(family: type) -> None:
    """A new error class without an entry in STATUS_FOR would silently become INTERNAL: none may exist."""
    leaves = _subclasses(family) or {family}
    assert sorted(cls.__name__ for cls in leaves if cls not in STATUS_FOR) == []


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (blobs.BlobMismatch("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (blobs.BlobTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (blobs.BlobNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (blobs.BlobStalled("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (BundleError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (store_errors.Conflict("version 3 < latest 5"), grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_registry_errors_map_to_what_the_caller_should_do(error: Exception, code: grpc.StatusCode) -> None:
    """Refused uploads and bundles are the caller's to fix; caps are RESOURCE_EXHAUSTED."""
    assert status_for(error) == code
