"""Errors of the control plane, split by what the caller should do.

    ControlPlaneError
    ├── InvalidRequest        the request is wrong; reject it, change nothing (INVALID_ARGUMENT)
    ├── Unauthenticated       no or bad credentials (UNAUTHENTICATED)
    ├── PermissionDenied      credentials are fine, the role is not (PERMISSION_DENIED)
    ├── NotFoundError         the named thing does not exist (NOT_FOUND)
    ├── AlreadyExistsError    the name is taken (ALREADY_EXISTS)
    ├── PreconditionFailed    valid request, wrong state (FAILED_PRECONDITION)
    ├── OutOfRange            an offset past the end of the data (OUT_OF_RANGE)
    └── DataDirError          the server cannot use its data dir; it cannot start

Store errors (controlplane.store.errors) are mapped to these status codes in
one place, ``controlplane.grpc_errors``.
"""

from __future__ import annotations


class ControlPlaneError(Exception):
    """Base of every error the control plane raises on purpose."""


class InvalidRequest(ControlPlaneError):
    pass


class Unauthenticated(ControlPlaneError):
    pass


class PermissionDenied(ControlPlaneError):
    pass


class NotFoundError(ControlPlaneError):
    pass


class AlreadyExistsError(ControlPlaneError):
    pass


class PreconditionFailed(ControlPlaneError):
    pass


class DataDirError(ControlPlaneError):
    pass


class OutOfRange(ControlPlaneError):
    pass
