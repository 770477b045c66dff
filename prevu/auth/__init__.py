"""
Reviewer access: passwords, signed tokens, login throttling and the proxy gate.

The modules here are a pure core (no I/O, no clock: `now` is an argument)
except `gate.py`, the AccessGate the proxy calls, and `github.py`, the GitHub
OAuth client. The HTML pages live in `prevu/control/login.py`.
"""
