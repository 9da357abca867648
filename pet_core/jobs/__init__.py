"""Jobs in worker processes: the runner (server side), the context and tasks (worker side)."""

from pet_core.jobs.context import JobContext, JobStopped, read_status
from pet_core.jobs.runner import Job, JobRunner

__all__ = ["Job", "JobContext", "JobRunner", "JobStopped", "read_status"]
