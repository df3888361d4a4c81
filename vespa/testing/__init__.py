"""Shipped fakes: stand-ins for model servers and the autoscaler, for demos and tests."""
