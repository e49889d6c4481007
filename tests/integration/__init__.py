"""Tests that run processes, brokers, ptys or sockets (`make test` runs them with the unit tests)."""
