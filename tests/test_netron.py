"""The offline Netron viewer: patches, the folder Streamlit serves, published models, model export.

The whole flow in a real browser (app on another loopback address) is tests/test_browser_netron.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import re
import sys
import time
import tomllib
import warnings
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import pytest
import torch
from torch import nn

from studio import netron
from studio.netron import patches, viewer

ROOT = Path(__file__).resolve().parents[1]


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 10))


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory) -> Path:
    """``static/`` of a throw-away app folder (never the repository's own)."""
    return tmp_path_factory.mktemp("app") / "static"


@pytest.fixture(scope="module")
def onnx_file() -> tuple[bytes, str]:
    return netron.model_to_netron_bytes(_small_model(), (1, 8, 8))


def _streamlit_get(static_dir: Path, rel: str) -> tuple[int, dict, bytes]:
    """GET ``/app/static/<rel>`` through Streamlit's own static-file route (no server, no network)."""
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from streamlit.web.server.starlette.starlette_routes import create_app_static_serving_routes

    routes = create_app_static_serving_routes(str(static_dir.parent / "app.py"), None)
    endpoint = next(r for r in routes if "GET" in r.methods).endpoint
    scope = {"type": "http", "method": "GET", "path": f"/app/static/{rel}", "path_params": {"path": rel},
             "headers": [], "query_string": b"", "http_version": "1.1"}

    async def fetch():
        try:
            response = await endpoint(Request(scope))
        except HTTPException as exc:
            return exc.status_code, {}, b""
        messages = []

        requested, finished = asyncio.Event(), asyncio.Event()

        async def receive():  # the request has no body; the client disconnects once the body is sent
            if not requested.is_set():
                requested.set()
                return {"type": "http.request", "body": b"", "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            messages.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finished.set()

        await asyncio.wait_for(response(scope, receive, send), timeout=60)
        start = next(m for m in messages if m["type"] == "http.response.start")
        headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        return start["status"], headers, body

    return asyncio.run(fetch())


def _served_path(static_dir: Path, url: str) -> str:
    """The path under ``static/`` that a viewer URL's model parameter points at (as the browser resolves it)."""
    parts = urlsplit(url)
    model = parse_qs(parts.query)["url"][0]
    absolute = urlsplit(urljoin(f"http://app.example{parts.path}", model)).path
    assert absolute.startswith("/app/static/"), absolute
    return unquote(absolute[len("/app/static/"):])


# --- patches --------------------------------------------------------------------------------------

def test_patches_applied_and_no_telemetry_in_served_files(static_dir):
    report = netron.patch_report()
    missing = [key for key, ok in report.items() if not ok]
    assert not missing, f"netron {netron.netron_version()}: offline patches not applied: {missing}"
    browser_js = netron.served_text("browser.js")
    assert "await consent();" not in browser_js and "await telemetry();" not in browser_js
    assert "new base.Telemetry(" not in browser_js
    assert "sendBeacon(url" not in netron.served_text("base.js")
    folder = netron.ensure_viewer(static_dir)
    texts = {p.name: p.read_text("utf-8", "replace") for p in folder.iterdir() if p.suffix in (".js", ".html")}
    assert "browser.js" in texts and "index.js" in texts
    for name, text in texts.items():
        for needle in netron.FORBIDDEN:
            assert needle not in text, f"{name} still contains {needle!r}"


def test_index_loads_only_same_origin_files(static_dir):
    index = (netron.ensure_viewer(static_dir) / "index.html").read_text("utf-8")
    # What the page loads by itself (scripts, styles, icons, images); <a href> links only open on a click.
    refs = re.findall(r'<(?:script|link|img|iframe|source|embed|object)\b[^>]*?\s(?:src|href|data)="([^"]+)"', index)
    assert netron.OFFLINE_SCRIPT in refs and "index.js" in refs
    assert refs.index(netron.OFFLINE_SCRIPT) < refs.index("index.js")  # the offline shim runs first
    assert not [r for r in refs if "//" in r or ":" in r], refs
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', index).group(1)
    assert "connect-src 'self' data: blob:" in csp and "default-src 'self'" in csp
    shim = (netron.ensure_viewer(static_dir) / netron.OFFLINE_SCRIPT).read_text("utf-8")
    assert "sendBeacon" in shim and "consent=" in shim


# --- the served folder ----------------------------------------------------------------------------

def test_viewer_written_once_and_complete(static_dir):
    folder = netron.ensure_viewer(static_dir)
    assert folder == netron.ensure_viewer(static_dir)
    assert folder.parent == static_dir / "netron" and folder.name == viewer.viewer_name()
    expected = {p.name for p in netron.netron_dir().iterdir()
                if p.is_file() and p.suffix in patches.SERVED_SUFFIXES} | {netron.OFFLINE_SCRIPT}
    assert {p.name for p in folder.iterdir()} == expected
    assert not list(folder.glob("*.py"))
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]


def test_stale_viewers_are_removed(static_dir, monkeypatch):
    root = static_dir / "netron"
    old, fresh = root / "viewer-0.0.1-old", root / "viewer-0.0.2-new"
    for folder in (old, fresh):
        folder.mkdir(parents=True)
        (folder / "index.html").write_text("old")
    past = time.time() - viewer.STALE_S - 60
    os.utime(old, (past, past))
    monkeypatch.setattr(viewer, "_ready", set())
    netron.ensure_viewer(static_dir)
    assert not old.exists() and fresh.exists()  # a folder in use by another process is left alone


def test_streamlit_serves_the_viewer_with_script_types(static_dir, onnx_file):
    folder = netron.ensure_viewer(static_dir).name
    expect = {"index.html": "text/html", "browser.js": "javascript", "index.js": "javascript",
              netron.OFFLINE_SCRIPT: "javascript", "onnx-metadata.json": "application/json",
              "grapher.css": "text/css", "favicon.ico": "image/"}
    for name, ctype in expect.items():
        status, headers, body = _streamlit_get(static_dir, f"netron/{folder}/{name}")
        assert status == 200, name
        assert ctype in headers["content-type"], (name, headers["content-type"])
        assert body == (static_dir / "netron" / folder / name).read_bytes()
    data, name = onnx_file
    status, headers, body = _streamlit_get(static_dir, _served_path(static_dir, netron.publish(
        data, name, static_dir=static_dir, base_url_path="")))
    assert status == 200 and body == data
    for bad in ("netron/../../app.py", f"netron/{folder}/__init__.py", f"netron/{folder}/nonexistent.js"):
        assert _streamlit_get(static_dir, bad)[0] in (400, 404), bad


# --- published models -----------------------------------------------------------------------------

def test_publish_url_is_relative_and_content_addressed(static_dir, onnx_file):
    data, name = onnx_file
    url = netron.publish(data, name, static_dir=static_dir, base_url_path="")
    parts = urlsplit(url)
    assert not parts.scheme and not parts.netloc  # a path on whatever origin the page was opened from
    assert parts.path == f"/app/static/netron/{viewer.viewer_name()}/index.html"
    model = parse_qs(parts.query)["url"][0]
    assert model.startswith("../models/") and model.endswith("/" + name)  # relative to the viewer
    assert (static_dir / _served_path(static_dir, url)).read_bytes() == data
    assert netron.publish(data, name, static_dir=static_dir, base_url_path="") == url
    under = netron.publish(data, name, static_dir=static_dir, base_url_path="/pet/studio/")
    assert under == "/pet/studio" + url
    odd = netron.publish(b"x", "../../etc/pass wd", static_dir=static_dir, base_url_path="")
    assert _served_path(static_dir, odd).endswith("/pass_wd")
    assert (static_dir / _served_path(static_dir, odd)).parent.parent == static_dir / "netron" / "models"


def test_publish_needs_static_serving(static_dir, monkeypatch):
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["enableStaticServing"] is True
    from streamlit import config as st_config

    monkeypatch.setattr(st_config, "get_option", lambda key: {"server.enableStaticServing": False}.get(key, ""))
    with pytest.raises(RuntimeError, match="enableStaticServing"):
        netron.publish(b"x", "m.onnx", static_dir=static_dir)


def test_publish_lru_is_bounded(tmp_path, monkeypatch):
    urls = [netron.publish(f"model {i}".encode(), "m.onnx", static_dir=tmp_path, base_url_path="")
            for i in range(netron.MAX_MODELS + 3)]
    files = netron.published_files(tmp_path)
    assert len(files) == netron.MAX_MODELS
    first, last = (tmp_path / _served_path(tmp_path, u) for u in (urls[0], urls[-1]))
    assert not first.exists() and not first.parent.exists() and last.read_bytes() == f"model {netron.MAX_MODELS + 2}".encode()
    assert files[0] == last
    assert netron.publish(b"model 0", "m.onnx", static_dir=tmp_path, base_url_path="") == urls[0]
    assert first.read_bytes() == b"model 0"  # published again: back, and now the newest
    assert len(netron.published_files(tmp_path)) == netron.MAX_MODELS

    monkeypatch.setattr(viewer, "MAX_MODEL_BYTES", 250)
    big = [netron.publish(bytes([i]) * 100, "b.onnx", static_dir=tmp_path, base_url_path="") for i in range(3)]
    kept = netron.published_files(tmp_path)
    assert sum(p.stat().st_size for p in kept) <= 250
    assert [tmp_path / _served_path(tmp_path, u) for u in big[::-1][:2]] == kept[:2]


def test_publish_refuses_what_streamlit_would_not_serve(tmp_path, monkeypatch):
    monkeypatch.setattr(viewer, "MAX_FILE_BYTES", 10)
    with pytest.raises(ValueError, match="more than the viewer serves"):
        netron.publish(b"x" * 11, "m.onnx", static_dir=tmp_path, base_url_path="")


# --- the model file -------------------------------------------------------------------------------

def _process_state() -> dict:
    return dict(grad=torch.is_grad_enabled(), dtype=torch.get_default_dtype(), threads=torch.get_num_threads(),
                deterministic=torch.are_deterministic_algorithms_enabled(), rng=torch.get_rng_state().clone(),
                matmul=torch.get_float32_matmul_precision(), device=str(torch.get_default_device()),
                inference=torch.is_inference_mode_enabled(), stdout=sys.stdout, stderr=sys.stderr,
                filters=list(warnings.filters))


def test_model_export_leaves_model_and_process_alone(onnx_file):
    model = _small_model().train()
    params = {k: (v, v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()}
    before = _process_state()
    data, name = netron.model_to_netron_bytes(model, (1, 8, 8))
    after = _process_state()
    assert torch.equal(before.pop("rng"), after.pop("rng"))
    assert before == after
    assert model.training and all(m.training for m in model.modules())
    for key, tensor in model.state_dict(keep_vars=True).items():
        original, values = params[key]
        assert tensor is original and type(tensor) is nn.Parameter and torch.equal(tensor, values)
    assert (data, name) == onnx_file  # deterministic and the same as for a fresh model


def test_model_export_onnx_and_torchscript_fallback(onnx_file, monkeypatch):
    data, name = onnx_file
    if importlib.util.find_spec("onnxscript") is None:
        assert name == "model.pt"
    else:
        assert name == "model.onnx"
        import onnx

        ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
        assert ops >= {"Gemm", "Relu"} or "MatMul" in ops

    def boom(*a, **k):
        raise RuntimeError("no onnx today")

    monkeypatch.setattr("studio.netron.model_file._export_onnx", boom)
    model = _small_model().train()
    data, name = netron.model_to_netron_bytes(model, (1, 8, 8))
    assert name == "model.pt" and model.training
    loaded = torch.jit.load(io.BytesIO(data))
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(loaded(x), model.eval()(x), atol=1e-5)


def test_torchscript_model_is_saved_as_is():
    scripted = torch.jit.trace(_small_model().eval(), torch.zeros(1, 1, 8, 8))
    data, name = netron.model_to_netron_bytes(scripted, (1, 8, 8))
    assert name == "model.pt"
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(torch.jit.load(io.BytesIO(data))(x), scripted(x))
