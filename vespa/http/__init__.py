"""HTTP relaying shared by the worker and the client; knows nothing of Vast."""
