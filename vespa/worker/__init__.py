"""The worker daemon: verifies, admits, accounts and relays requests to a model server."""
