"""The Fine-tune page as a person drives it (AppTest): start, watch it finish, export, continue.

tests/test_app.py::test_finetune_never_changes_compress_and_exports_the_finetuned_run already covers
a finished fine-tune leaving Compress alone, Export building the run (reached by setting
``export_run`` in session state) and Continue's lineage. This file covers what that one does not:
the page's own polling until the run ends (every rerun shows a consistent running or finished
state), the numbers the page shows against the ledger, the techniques the page recorded, the
"Export this run" button itself, and what Continue does to the source and the recipe.
"""

import re
import time

import pytest
from streamlit.testing.v1 import AppTest

from pet_core.ledger import Ledger
from pet_core.loader import load_baseline
from pet_core.runs import open_run
from studio.state import ledger as app_ledger
from pet_core.workspace import ledger_path
from test_app import assert_clean, key, metrics, new_app

POLL_LIMIT_S = 120   # a 0.5-epoch run on digits takes a few seconds in the worker


@pytest.fixture(scope="module", autouse=True)
def _model_in_cache_and_app_ledger():
    """The default zoo model in the session's cache (conftest), so neither the page nor the worker trains
    it; and the app's ledger is this session's workspace's (conftest): the app keeps one ledger per
    ledger file, so a module before this one with its own workspace (tests/test_app.py) does not leak."""
    load_baseline("lenet_300_100", "digits")
    assert app_ledger().path == ledger_path()
    yield


def buttons(at: AppTest) -> dict:
    return {b.key: b for b in at.button if b.key}


def poll_until_finished(at: AppTest) -> None:
    """Rerun the page (as its timer does) until it shows the finished run; every rerun must be consistent.

    A rerun drawn while the job was still going (``job.done`` is False after it, so it was before)
    must say what is happening and offer Stop, not Start.
    """
    deadline = time.monotonic() + POLL_LIMIT_S
    while time.monotonic() < deadline:
        at.run()
        assert_clean(at)
        assert not at.error, [e.value for e in at.error]
        shown = metrics(at)
        b = buttons(at)
        if "Accuracy after fine-tuning" in shown:
            assert not b["f_start"].disabled and b["f_stop"].disabled   # finished: Start again, no Stop
            return
        assert at.session_state["finetune_job"].job.status()["state"] in ("queued", "running", "done")
        if not at.session_state["finetune_job"].job.done:
            told = [i.value for i in at.info if i.value.startswith(("Waiting for a free worker", "Preparing in"))]
            assert len(told) + len(at.get("progress")) == 1, [i.value for i in at.info]   # says what it is doing
            assert b["f_start"].disabled and not b["f_stop"].disabled   # running: Stop, no second Start
        time.sleep(0.2)
    job = at.session_state["finetune_job"].job
    raise AssertionError(f"the page did not show a finished run after {POLL_LIMIT_S} s: {job.status()}")


def percent(text: str) -> float:
    m = re.fullmatch(r"(\d{1,3}\.\d\d)%", text)
    assert m, f"not a percentage: {text!r}"
    return float(m.group(1)) / 100


def test_finetune_page_runs_to_the_end_then_exports_and_continues():
    at = new_app()
    at.switch_page("pages/compress.py").run()
    at.slider(key=key(at, "c_prune_sparsity")).set_value(0.8).run()
    at.select_slider(key=key(at, "c_quantize_bits")).set_value(4).run()
    compressed = at.session_state["recipe"].to_dict()
    compressed_run = at.session_state["report"][2]["run_id"]     # the post-training run of this setting

    at.switch_page("pages/finetune.py").run()
    assert_clean(at)
    assert "Accuracy after fine-tuning" not in metrics(at)
    at.number_input(key="f_epochs").set_value(0.5).run()
    at.checkbox(key="f_qat").check().run()
    at.checkbox(key="f_distill").check().run()
    at.slider(key="f_temperature").set_value(2.0).run()
    at.button(key="f_start").click().run()
    assert_clean(at)
    run_id = at.session_state["finetune_run"]
    poll_until_finished(at)

    # The ledger: a fine-tuned run of exactly the compressed recipe plus the page's fine-tune settings.
    run = Ledger().get(run_id)
    assert run["kind"] == "fine-tuned" and run["status"] == "done", run
    assert run["parent_id"] == compressed_run
    assert run["model"] == "lenet_300_100"
    recorded = dict(run["recipe"])
    ft = recorded.pop("finetune")
    assert recorded == {k: v for k, v in compressed.items() if k != "finetune"}
    assert ft["epochs"] == 0.5 and ft["techniques"]["qat"] == {}
    assert ft["techniques"]["distill"]["temperature"] == 2.0

    # The page: the ledger's numbers, formatted; the delta is against the baseline the page shows.
    shown = metrics(at)
    accuracy = percent(shown["Accuracy after fine-tuning"])
    assert 0.0 <= accuracy <= 1.0
    assert shown["Accuracy after fine-tuning"] == f"{run['metrics']['accuracy']:.2%}"
    _, rebuilt = open_run(Ledger(), run_id)       # the stored weights, re-compressed, measured afresh
    assert f"{rebuilt.evaluate():.2%}" == shown["Accuracy after fine-tuning"]
    baseline_accuracy = at.session_state["report"][2]["baseline"]["accuracy"]
    delta = next(m.proto.delta for m in at.metric if m.label == "Accuracy after fine-tuning")
    assert delta == f"{(run['metrics']['accuracy'] - baseline_accuracy) * 100:+.2f} pts vs baseline"
    assert shown["Size"] == f"{run['metrics']['size_bytes']:,} B"
    assert shown["Run"] == f"#{run_id} done"
    assert at.session_state["recipe"].to_dict() == compressed   # finishing changed no setting

    # "Export this run": the Export page opens on this run.
    buttons(at)["f_export"].click().run()
    assert_clean(at)
    assert "export_run" not in at.session_state                 # the Export page took it...
    assert at.selectbox(key="x_run").value == run_id != compressed_run   # ...and opened on the run, not Compress's

    # "Continue from this run": the run becomes the session's model, with its recipe minus the training.
    at.switch_page("pages/finetune.py").run()
    buttons(at)["f_continue"].click().run()
    assert_clean(at)
    assert at.session_state["source"]["model"] == f"run:{run_id}"
    continued = at.session_state["recipe"].to_dict()
    assert continued["model"] == f"run:{run_id}" and not continued.get("finetune")
    assert continued["default"] == compressed["default"]
