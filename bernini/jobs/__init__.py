"""The one job engine the demo, the service and the torchrun front ends adapt.

:mod:`.group`: running a planned request on every rank of a torchrun group (its leader broadcasts the
job, the other ranks follow, idle ranks get keep-alives, and a cancel reaches every rank at the same step).
:mod:`.events`: a job's states and its progress events, published in memory for the front ends that
follow a job (the service's server-sent events, the demo's progress bar).
"""

from .events import FINISHED, STATES, EventBoard, check_transition
from .group import JobGroup, JobStopped, step_phase

__all__ = ["FINISHED", "STATES", "EventBoard", "JobGroup", "JobStopped", "check_transition", "step_phase"]
