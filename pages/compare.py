"""Compare runs: what changed between two runs of this model and dataset, beyond the Pareto plot's two numbers.

Both runs are reopened and run over the test set: agreement, items fixed and broken, accuracy per
class, the change in the confusion matrix, the flipped items, and each layer's weight difference.
"""

import streamlit as st

from pet_core.errors import PetError
from studio import compare_view, state
from studio.text import plain

state.init()  # also here: a fresh server's first run may execute this page alone
st.title("Compare runs")
base = state.baseline()
if base is None:
    st.stop()
if base.weights_only:
    st.info("Comparing runs means running both models on test data, and this model was loaded without a dataset "
            "(weights only). Load it with a dataset on the Model page.")
    st.page_link("pages/model.py", label="Choose a dataset", icon=":material/neurology:")
    st.stop()
runs = {r["id"]: r for r in state.runs(everyone=True) if r["status"] in ("done", "stopped")}
if not runs:
    st.info("No finished runs of this model and dataset yet: Compress records one for every setting you try.")
    st.page_link("pages/compress.py", label="Compress", icon=":material/tune:")
    st.stop()
ids = list(runs)
a0, b0 = compare_view.default_pair(list(runs.values()))
c1, c2 = st.columns(2)
a = c1.selectbox("Run A (reference)", ids, index=ids.index(a0), format_func=lambda i: compare_view.run_label(runs[i]),
                 key="cmp_a")
b = c2.selectbox("Run B", ids, index=ids.index(b0), format_func=lambda i: compare_view.run_label(runs[i]),
                 key="cmp_b")
try:
    out = compare_view.compare(str(state.ledger().path), runs[a], runs[b], bool(base.info.get("trusted")))
except PetError as exc:
    st.error(plain(exc))
    st.stop()
except Exception as exc:   # a model that fails to run on the data: one line, never a traceback
    first = (str(exc).splitlines() or [""])[0]
    st.error(plain(f"Could not compare runs {a} and {b}: {type(exc).__name__}: {first}"))
    st.stop()
compare_view.show(out)
