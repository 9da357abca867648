"""An offline Netron viewer served by the app itself: same host and port, any browser.

``patches`` makes a copy of netron's browser build that never reaches the network,
``viewer`` writes it (and each model to show) where Streamlit's static file serving
serves it, ``model_file`` turns a module into a file Netron opens::

    data, name = model_to_netron_bytes(model, (1, 28, 28))   # ONNX, else TorchScript
    st.iframe(publish(data, name), height=640)               # "/app/static/netron/.../index.html?url=..."
"""

from studio.netron.model_file import model_to_netron_bytes
from studio.netron.patches import (FORBIDDEN, OFFLINE_SCRIPT, PATCHES, netron_dir, netron_version, patch_report,
                                   served_text)
from studio.netron.viewer import MAX_MODELS, ensure_viewer, publish, published_files

__all__ = ["FORBIDDEN", "MAX_MODELS", "OFFLINE_SCRIPT", "PATCHES", "ensure_viewer", "model_to_netron_bytes",
           "netron_dir", "netron_version", "patch_report", "publish", "published_files", "served_text"]
