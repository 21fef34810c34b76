"""The agent's exception tree, split by what the caller should do.

    AgentError                 base of everything the agent raises on purpose
     ├── AgentConfigError      bad configuration (also a ValueError): fix the input, do not retry
     ├── EnrollmentError       the control plane rejected the join: do not retry with the same token
     ├── TransportError        the network or the server failed: retry later with backoff
     └── IdentityError         the stored device identity is missing or corrupt: re-enroll

Third-party exceptions (grpc, paho, onnxruntime) are mapped into this tree once, at the
adapter that calls the library, with ``raise ... from exc``.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


class AgentConfigError(AgentError, ValueError):
    """The configuration (file, command line or environment) is invalid; the message names what to fix."""


class EnrollmentError(AgentError):
    """The control plane rejected the join request; retrying with the same token will not help."""


class TransportError(AgentError):
    """The connection to the control plane failed or timed out; retry later with backoff."""


class IdentityError(AgentError):
    """The stored device identity (key, certificate) is missing or corrupt; the device must re-enroll."""
