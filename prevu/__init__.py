"""prevu: self-hosted preview environments for pull requests, on Twisted."""

__version__ = "0.1.0"
