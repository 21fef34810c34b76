"""The one place where control-plane and store errors become gRPC status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import grpc

from controlplane import blobs, errors, mqtt_accounts, rollout
from controlplane.store import errors as store_errors
from protos.bundles import BundleError

log = logging.getLogger("edgefleet.server")

STATUS_FOR: dict[type[Exception], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    errors.PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.DataDirError: grpc.StatusCode.INTERNAL,
    store_errors.NotFound: grpc.StatusCode.NOT_FOUND,
    store_errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    store_errors.Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    store_errors.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    blobs.BlobError: grpc.StatusCode.INTERNAL,
    blobs.BlobMismatch: grpc.StatusCode.INVALID_ARGUMENT,
    blobs.BlobTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    blobs.BlobNotFound: grpc.StatusCode.NOT_FOUND,
    blobs.BlobStalled: grpc.StatusCode.DEADLINE_EXCEEDED,
    BundleError: grpc.StatusCode.INVALID_ARGUMENT,
    rollout.RolloutError: grpc.StatusCode.FAILED_PRECONDITION,
    mqtt_accounts.BrokerAccountError: grpc.StatusCode.FAILED_PRECONDITION,
}

# Errors raised on purpose, whose messages are meant for the caller.
_OURS = (errors.ControlPlaneError, store_errors.StoreError, blobs.BlobError, BundleError)


def status_for(exc: Exception) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in STATUS_FOR:
            return STATUS_FOR[kind]
    return grpc.StatusCode.INTERNAL


def handle_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate an async handler with a unary response (its request may be a stream): our errors
    abort with their status code."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except _OURS as exc:
            await context.abort(status_for(exc), str(exc))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    return wrapper
