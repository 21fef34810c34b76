"""Task pipelines: turn an app's raw input into model feeds and the model's outputs into answers.

Each pipeline is built once per activated build (``LoadedModel``) and holds what the bundle
ships besides the model (tokenizer, labels). Errors, split by what the caller should do:

    PipelineError             base (an AgentError)
     ├── BundleContractError  the active build does not meet its task's contract: deploy a fixed build
     └── PipelineInputError   the request is unusable (empty, too large, rejected by the model): fix the input
"""

from __future__ import annotations

from agent.errors import AgentError


class PipelineError(AgentError):
    """Base class of the errors a task pipeline raises on purpose."""


class BundleContractError(PipelineError):
    """The active build's files or model do not match what its task's pipeline needs; the message says what."""


class PipelineInputError(PipelineError, ValueError):
    """The request cannot be answered as given (empty, over a size limit, refused by the model)."""
