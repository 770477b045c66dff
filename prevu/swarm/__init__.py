"""
Docker Swarm, the pure parts (issue 19, docs/scale-out.md): the service
specs prevu asks Swarm for, how a service's tasks read as a container state
and an address, and whether this prevu may run the swarm runtime at all.
The adapter is `prevu.adapters.swarm_runtime`.
"""
