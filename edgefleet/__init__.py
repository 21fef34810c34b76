"""edgefleet: the command-line entry point that joins the agent and the control plane."""

__version__ = "0.1.0"
