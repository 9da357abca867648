"""Code-carrying model files (TorchScript, torch.export, pickle) load only with trust.

The payloads below really run code when loaded: a TorchScript ``__setstate__`` and ``forward`` that
create files (``torch.from_file`` with ``shared=True`` creates its file), and a pickle whose
``__reduce__`` calls ``open(marker, "w")``. The tests show they do so with trust, and that without
it they are refused before the deserialiser is even called.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch import nn

from pet_core.errors import PetError
from pet_core.model_io import env_trusts_code, load_model_file
from pet_core.zoo import build_model

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)
REFUSAL = ("model file {name} {what}, which runs code from the file when loaded; "
           "refused (start with --trust-code / PET_TRUST_CODE=1 to allow)")


class _Trap(nn.Module):
    """Creates ``marker + '.set'`` whenever TorchScript restores it."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.probe = torch.zeros(1)

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self):
        return (self.marker, self.training, self.probe)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool, torch.Tensor]):
        self.marker = state[0]
        self.training = state[1]
        self.probe = torch.from_file(self.marker + ".set", True, 8, dtype=torch.uint8)[:1].float()


class _Payload(nn.Module):
    """A working 8x8 -> 10 classifier whose forward also creates ``marker + '.fwd'``."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.trap = _Trap(marker)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        probe = torch.from_file(self.marker + ".fwd", True, 8, dtype=torch.uint8)[:1].float() * 0
        return self.fc(self.trap(x).flatten(1)) + probe


class _OpenOnUnpickle:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_torchscript(folder: Path) -> tuple[Path, Path]:
    marker = folder / "ts_marker"
    path = folder / "evil_ts.pt"
    torch.jit.script(_Payload(str(marker))).save(str(path))
    return path, marker


def _evil_pickle(folder: Path) -> tuple[Path, Path]:
    marker = folder / "pickle_marker"
    path = folder / "evil_pickle.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _OpenOnUnpickle(str(marker))}, path)
    return path, marker


def _markers(marker: Path) -> list[Path]:
    return [p for p in marker.parent.iterdir() if p.name.startswith(marker.name)]


# --- in process --------------------------------------------------------------------------------------

def test_torchscript_is_refused_without_calling_jit_load(tmp_path, monkeypatch):
    path, marker = _evil_torchscript(tmp_path)

    def never(*a, **k):
        raise AssertionError("torch.jit.load called without trust")

    monkeypatch.setattr(torch.jit, "load", never)
    with pytest.raises(PetError) as err:
        load_model_file(path, SHAPE, 10)
    assert str(err.value) == REFUSAL.format(name=path.name, what="is TorchScript")
    assert _markers(marker) == []


def test_torchscript_payload_is_real_and_runs_only_with_trust(tmp_path):
    path, marker = _evil_torchscript(tmp_path)
    with pytest.raises(PetError, match="is TorchScript"):
        load_model_file(path, SHAPE, 10)
    assert _markers(marker) == []
    model, info = load_model_file(path, SHAPE, 10, trust_code=True)  # restore and forward check run its code
    assert info["kind"] == "torchscript"
    assert sorted(p.name for p in _markers(marker)) == ["ts_marker.fwd", "ts_marker.set"]


def test_pickle_payload_is_real_and_runs_only_with_trust(tmp_path):
    path, marker = _evil_pickle(tmp_path)
    with pytest.raises(PetError) as err:
        load_model_file(path, SHAPE, 10)
    assert str(err.value) == REFUSAL.format(name=path.name,
                                            what="holds a pickled module (Python objects, not only tensors)")
    assert not marker.exists()
    with pytest.raises(PetError):  # trusted: it unpickles (and opens the marker), then holds no model
        load_model_file(path, SHAPE, 10, trust_code=True)
    assert marker.exists()


def test_torch_export_program_needs_trust(tmp_path, monkeypatch):
    model = build_model("lenet_300_100", SHAPE, 10, seed=1).eval()
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, *SHAPE),)), str(path))
    real_load = torch.export.load
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: pytest.fail("torch.export.load without trust"))
    with pytest.raises(PetError) as err:
        load_model_file(path, SHAPE, 10)
    assert str(err.value) == REFUSAL.format(name="m.pt2", what="is a torch.export program")
    monkeypatch.setattr(torch.export, "load", real_load)
    loaded, info = load_model_file(path, SHAPE, 10, trust_code=True)
    x = torch.randn(3, *SHAPE)
    assert info == {"kind": "export", "arch": "lenet_300_100", "path": str(path)}
    assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_safe_formats_need_no_trust(tmp_path, monkeypatch):
    from pet_core.model_io import save_state_dict

    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("jit.load for a state_dict"))
    model = build_model("mnist_cnn", SHAPE, 10)
    for name in ("m.pt", "m.safetensors"):
        save_state_dict(model, tmp_path / name)
        assert load_model_file(tmp_path / name, SHAPE, 10)[1]["arch"] == "mnist_cnn"


def test_baseline_says_it_was_trusted(tmp_path):
    # pages hand info["trusted"] to a job's worker, which reloads the file and needs the same trust
    from pet_core.loader import load_baseline
    from pet_core.model_io import save_state_dict

    model = build_model("lenet_300_100", SHAPE, 10)
    torch.jit.script(model).save(str(tmp_path / "ts.pt"))
    save_state_dict(model, tmp_path / "sd.safetensors")
    assert load_baseline(str(tmp_path / "ts.pt"), "digits", trust_code=True).info["trusted"] is True
    assert "trusted" not in load_baseline(str(tmp_path / "sd.safetensors"), "digits", trust_code=True).info


@pytest.mark.parametrize("value, trusted", [("1", True), (" 1 ", True), ("0", False), ("", False),
                                            ("yes", False), (None, False)])
def test_env_trusts_code(value, trusted):
    env = {} if value is None else {"PET_TRUST_CODE": value}
    assert env_trusts_code(env) is trusted


# --- the CLI in a subprocess -------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pet_core", "analyze", "--dataset", "digits", "--json", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust_cli")
    evil_ts, ts_marker = _evil_torchscript(d)
    evil_pickle, pickle_marker = _evil_pickle(d)
    torch.jit.script(build_model("lenet_300_100", SHAPE, 10)).save(str(d / "lenet_ts.pt"))
    torch.save(build_model("lenet_300_100", SHAPE, 10), d / "lenet_whole.pt")
    commands = {
        "evil_ts": ("--model", str(evil_ts)),
        "evil_pickle": ("--model", str(evil_pickle)),
        "ts_trusted": ("--model", str(d / "lenet_ts.pt"), "--trust-code"),
        "pickle_trusted_old_flag": ("--model", str(d / "lenet_whole.pt"), "--allow-pickle"),
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {k: pool.submit(_cli, *args) for k, args in commands.items()}
        runs = {k: f.result() for k, f in futures.items()}
    return runs, {"evil_ts": ts_marker, "evil_pickle": pickle_marker}


@pytest.mark.parametrize("key, what", [("evil_ts", "is TorchScript"), ("evil_pickle", "holds a pickled module")])
def test_cli_refuses_code_without_trust(cli_runs, key, what):
    runs, markers = cli_runs
    proc = runs[key]
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip("\n").splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    assert lines[0].startswith("error: model file ") and what in lines[0] and "--trust-code" in lines[0]
    assert _markers(markers[key]) == []


@pytest.mark.parametrize("key", ["ts_trusted", "pickle_trusted_old_flag"])
def test_cli_loads_trusted_zoo_models(cli_runs, key):
    proc = cli_runs[0][key]
    assert proc.returncode == 0, proc.stderr
    assert '"fc1"' in proc.stdout and '"fc3"' in proc.stdout
