"""The data plane: a host-routing HTTP/1.1 reverse proxy on raw Twisted protocols."""
