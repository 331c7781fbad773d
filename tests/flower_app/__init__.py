"""A Flower App for the runtime tests of ``clair_stats.flower``.

Used by tests/test_flower_runtime.py only.

Flower loads ``server_app.py`` and ``client_app.py`` from this folder as the
top-level modules ``server_app`` and ``client_app`` (``pyproject.toml``,
[tool.flwr.app.components]), so they import each other by those names, never
through this package.
"""
