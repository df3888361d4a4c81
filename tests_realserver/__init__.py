"""
Tests against a real model server: llama.cpp through ``llama-cpp-python[server]``
serving a tiny random-weight model the tests write. Run by ``tox -e realserver``
(apart from the fast suite: the server takes seconds to start, the build minutes).
"""
