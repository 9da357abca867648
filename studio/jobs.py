"""The server's job runner (worker processes) and the link between jobs and browser sessions.

A job belongs to the session that started it. It is cancelled when that session ends: when
Streamlit drops the session's state (a ``JobHandle`` finaliser) and, on a real server, when the
session's browser has been gone for ``PET_SESSION_GRACE_S`` seconds (a reaper thread asks the
runtime). Pages never call the runner's workers' code: they read ``job.status()`` in a fragment.
"""

from __future__ import annotations

import os
import threading
import time
import weakref

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from pet_core.jobs import Job, JobRunner

GRACE_S = float(os.environ.get("PET_SESSION_GRACE_S", "15"))


def session_id() -> str:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


@st.cache_resource(show_spinner=False)
def runner() -> JobRunner:
    """One runner for the whole server: ``PET_MAX_JOBS`` worker processes (default 1)."""
    r = JobRunner()
    threading.Thread(target=_reap, args=(r,), name="pet-job-reaper", daemon=True).start()
    return r


def _reap(r: JobRunner) -> None:
    """Cancel the jobs of sessions whose browser is gone (closed tab, expired session)."""
    gone_since: dict[str, float] = {}
    while True:
        time.sleep(2.0)
        try:
            from streamlit.runtime import Runtime

            if not Runtime.exists():
                continue
            runtime = Runtime.instance()
            now = time.monotonic()
            for owner in r.owners():
                if runtime.is_active_session(owner):
                    gone_since.pop(owner, None)
                elif now - gone_since.setdefault(owner, now) > GRACE_S:
                    r.cancel_owner(owner)
                    gone_since.pop(owner, None)
        except Exception:   # the reaper must never die; it retries in 2 s
            continue


class JobHandle:
    """Held in session state; when Streamlit drops the session's state, the job is cancelled."""

    def __init__(self, job: Job, r: JobRunner) -> None:
        self.job = job
        weakref.finalize(self, r.cancel, job.id)


def submit(task: str, kwargs: dict, label: str) -> JobHandle:
    """Submit ``task`` for this session (PetError when its limit of jobs is reached)."""
    r = runner()
    return JobHandle(r.submit(task, kwargs, owner=session_id(), label=label), r)


def running(handle: JobHandle | None) -> bool:
    """True while the session's job under this handle is queued or running."""
    return handle is not None and not handle.job.done


def rerun_once_done(handle: JobHandle | None, seen_key: str) -> None:
    """The first time a page's live fragment sees its job finished, a full rerun: it turns the fragment's
    timer off and redraws the page from what the job recorded (``seen_key`` remembers the job)."""
    if handle is not None and handle.job.done and st.session_state.get(seen_key) != handle.job.id:
        st.session_state[seen_key] = handle.job.id
        st.rerun()
