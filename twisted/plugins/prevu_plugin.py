"""The twistd dropin: `twistd prevu`."""

from twisted.application.service import ServiceMaker

prevu = ServiceMaker(
    "prevu",
    "prevu.tap",
    "Pull-request preview environments: webhooks, orchestrator and routing proxy.",
    "prevu",
)
