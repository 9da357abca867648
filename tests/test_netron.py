"""The offline Netron viewer: loopback server, patches, model export, real browser."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from torch import nn

from studio import netron_server as ns

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "artifacts" / "screenshots" / "netron.png"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 10))


def _get(path: str) -> tuple[int, dict, bytes]:
    port = ns.ensure_server()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def onnx_file() -> tuple[bytes, str]:
    return ns.model_to_netron_bytes(_small_model(), (1, 8, 8))


def test_server_is_shared_and_loopback():
    port = ns.ensure_server()
    assert port == ns.ensure_server() > 0
    assert ns._server.server_address[0] == "127.0.0.1"


def test_serves_index_with_headers():
    status, headers, body = _get("/index.html")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "no-cache" in headers["Cache-Control"]
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    assert ns.OFFLINE_SCRIPT.encode() in body
    status, headers, _ = _get("/browser.js")
    assert status == 200 and headers["Content-Type"].startswith("application/javascript")
    status, headers, _ = _get("/onnx-metadata.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert "max-age" in headers["Cache-Control"]
    status, headers, _ = _get("/grapher.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    status, headers, _ = _get("/favicon.ico")
    assert status == 200 and headers["Content-Type"] == "image/x-icon"
    status, _, _ = _get("/")
    assert status == 200  # redirected to /index.html


def test_publish_serves_model(onnx_file):
    data, name = onnx_file
    url = ns.publish(data, name)
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.path == "/index.html"
    assert parts.query.startswith("url=/models/") and parts.query.endswith("/" + name)
    assert ns.publish(data, name) == url  # content-addressed
    status, headers, body = _get(parts.query[len("url="):])
    assert status == 200 and body == data
    assert headers["Content-Type"] == "application/octet-stream"
    assert "Cache-Control" in headers
    assert _get("/models/0000000000/model.onnx")[0] == 404


def test_publish_lru_is_bounded():
    urls = [ns.publish(f"model {i}".encode(), "m.onnx") for i in range(ns.MAX_MODELS + 3)]
    assert len(ns._models) <= ns.MAX_MODELS
    first, last = (u.split("url=")[1] for u in (urls[0], urls[-1]))
    assert _get(first)[0] == 404 and _get(last)[0] == 200


@pytest.mark.parametrize("path", [
    "/../__init__.py", "/%2e%2e/__init__.py", "/..%2f..%2fetc%2fpasswd", "/%2fetc%2fpasswd",
    "/models/../index.html", "/server.py", "/__init__.py", "/__pycache__/", "/etc/passwd",
    "/..\\__init__.py", "/nonexistent.js",
])
def test_path_traversal_refused(path):
    assert _get(path)[0] in (403, 404)


def test_patches_applied_and_no_telemetry_in_served_files():
    report = ns.patch_report()
    missing = [key for key, ok in report.items() if not ok]
    assert not missing, f"netron {ns.netron_version()}: offline patches not applied: {missing}"
    browser_js = ns.served_text("browser.js")
    assert "await consent();" not in browser_js and "await telemetry();" not in browser_js
    assert "new base.Telemetry(" not in browser_js
    assert "sendBeacon(url" not in ns.served_text("base.js")
    # No analytics / IP look-up endpoint anywhere in what we serve.
    for path in sorted(ns.netron_dir().iterdir()):
        if path.suffix in (".js", ".html"):
            status, _, body = _get("/" + path.name)
            assert status == 200, path.name
            text = body.decode("utf-8", "replace")
            for needle in ns.FORBIDDEN:
                assert needle not in text, f"{path.name} still contains {needle!r}"


def test_model_export_onnx_and_torchscript_fallback(onnx_file, monkeypatch):
    data, name = onnx_file
    if importlib.util.find_spec("onnxscript") is None:
        assert name == "model.pt"
    else:
        assert name == "model.onnx"
        import onnx

        graph = onnx.load_from_string(data).graph
        assert {n.op_type for n in graph.node} >= {"Gemm", "Relu"} or "MatMul" in {n.op_type for n in graph.node}

    def boom(*a, **k):
        raise RuntimeError("no onnx today")

    monkeypatch.setattr(ns, "_export_onnx", boom)
    model = _small_model()
    model.train()
    data, name = ns.model_to_netron_bytes(model, (1, 8, 8))
    assert name == "model.pt" and model.training
    loaded = torch.jit.load(__import__("io").BytesIO(data))
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    assert torch.allclose(loaded(x), model(x), atol=1e-5)


def _browser_render(url: str, screenshot: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pet-chromium-") as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            user_data_dir=profile,
            executable_path=CHROMIUM,
            headless=True,
            viewport={"width": 1000, "height": 900},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            page = ctx.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("#canvas .node", state="visible", timeout=60_000)
            page.wait_for_timeout(500)
            nodes = page.locator("#canvas .node").count()
            svg_text = page.locator("#canvas").text_content() or ""
            message_visible = page.locator("#message-text").is_visible()
            message_text = page.locator("#message-text").inner_text()
            body_class = page.locator("body").get_attribute("class")
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot))
        finally:
            ctx.close()
    return dict(requests=requests, errors=errors, nodes=nodes, svg_text=svg_text,
                message_visible=message_visible, message_text=message_text, body_class=body_class)


def _skip_without_browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright not installed (pip install playwright)")


def _assert_offline_render(result: dict, *op_names: str):
    offsite = [u for u in result["requests"] if urlsplit(u).hostname not in LOOPBACK]
    assert not offsite, f"requests left loopback: {offsite}"
    assert result["requests"], "no requests recorded"
    assert not result["message_visible"], f"dialog shown: {result['message_text']!r}"
    assert "cookies" not in result["message_text"]
    assert result["nodes"] > 0
    assert any(op in result["svg_text"] for op in op_names), result["svg_text"][:500]
    assert not result["errors"], result["errors"]


@pytest.mark.slow
def test_browser_renders_onnx_offline(onnx_file):
    _skip_without_browser()
    data, name = onnx_file
    result = _browser_render(ns.publish(data, name), SCREENSHOT)
    _assert_offline_render(result, "Gemm", "MatMul", "Relu")
    assert SCREENSHOT.stat().st_size > 5000


@pytest.mark.slow
def test_browser_renders_torchscript_offline():
    _skip_without_browser()
    model = _small_model().eval()
    buf = __import__("io").BytesIO()
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 8, 8)), buf)
    result = _browser_render(ns.publish(buf.getvalue(), "model.pt"),
                             SCREENSHOT.with_name("netron_torchscript.png"))
    _assert_offline_render(result, "linear", "Linear", "relu", "addmm")
