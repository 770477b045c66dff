"""Fakes for tests: of our own Protocols, and small fakes of outside HTTP APIs."""
