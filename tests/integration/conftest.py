"""Fixtures shared by the integration tests."""

from .postgres_env import postgres_cluster, postgres_url  # noqa: F401 (fixtures, found by name)
