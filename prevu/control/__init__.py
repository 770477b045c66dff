"""The control app: webhooks, login, API and dashboard (Klein)."""
