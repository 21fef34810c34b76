"""The operator CLI: one Typer sub-app per noun. Imports only grpc, typer and rich."""
