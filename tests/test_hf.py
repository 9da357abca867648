"""Hugging Face folders, tasks and metrics, token datasets, module:factory architectures, weights only.

Models are tiny and built from configs (tests/hf_models.py); every metric is checked against an
independent computation: perplexity against transformers' own ``labels=`` loss and a hand-built
bigram model, accuracy against an argmax written out here.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

import hf_models  # noqa: E402  (after the skip: it needs transformers)
from pet_core import cli  # noqa: E402
from pet_core.data import load_dataset  # noqa: E402
from pet_core.errors import PetError  # noqa: E402
from pet_core.hf import load_hf_folder, model_from_hf_config  # noqa: E402
from pet_core.loader import load_baseline  # noqa: E402
from pet_core.metrics import ACCURACY, PERPLEXITY, evaluate, metric_for, perplexity  # noqa: E402
from pet_core.model_io import save_state_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    return hf_models.gpt2_folder(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    return hf_models.bert_folder(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def vit_dir(tmp_path_factory) -> Path:
    return hf_models.vit_folder(tmp_path_factory.mktemp("vit"))


def _one_line_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(PetError, match=match) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


# --- metrics ------------------------------------------------------------------------------------

class Bigram(nn.Module):
    """logits[b, t] = log P(next | x[b, t]) from a fixed transition table: a known perplexity."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.log_p = nn.Parameter(table.log(), requires_grad=False)   # (V, V), rows sum to 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.log_p[x],)                                        # a tuple: logits_of takes [0]


def test_perplexity_oracle_bigram():
    table = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]])
    x = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 1]])
    pairs = [(0, 1), (1, 2), (2, 0), (2, 2), (2, 1), (1, 1)]   # (token, next) in both blocks
    want = math.exp(-sum(math.log(float(table[a, b])) for a, b in pairs) / len(pairs))
    got = perplexity(Bigram(table), x, batch_size=1)
    assert got == pytest.approx(want, rel=1e-6)
    assert perplexity(Bigram(table), x, batch_size=8) == pytest.approx(got, rel=1e-12)
    assert evaluate(Bigram(table), x, torch.zeros(0, dtype=torch.long), "causal_lm") == pytest.approx(want, rel=1e-6)
    _one_line_error("L >= 2", perplexity, Bigram(table), x[:, :1])


def test_metric_directions_and_format():
    assert metric_for("causal_lm") is PERPLEXITY and not PERPLEXITY.higher_is_better
    assert metric_for("sequence_classification") is ACCURACY and ACCURACY.higher_is_better
    assert ACCURACY.format(0.97777) == "97.78%" and PERPLEXITY.format(43.214) == "43.21"
    assert PERPLEXITY.format(None) == "not measured"
    assert PERPLEXITY.better(10.0, 12.0) and ACCURACY.better(0.9, 0.8)
    _one_line_error("unknown task", metric_for, "translation")


def test_cli_text_names_the_metric():
    lm = {"metric": {"name": "perplexity", "higher_is_better": False}}
    assert cli._metric_text(lm, {"perplexity": 43.214}) == "perplexity 43.21 (lower is better)"
    assert cli._metric_text(lm, {"perplexity": None}) == "perplexity not measured"
    assert cli._metric_text({}, {"accuracy": 0.5}) == "accuracy 0.5000"      # reports without a metric key


# --- causal LM ----------------------------------------------------------------------------------

def test_gpt2_token_npz_perplexity_matches_transformers_loss(gpt2_dir, tmp_path):
    tokens = np.random.default_rng(0).integers(0, hf_models.GPT2_VOCAB, 300)
    np.savez(tmp_path / "stream.npz", tokens=tokens)
    b = load_baseline(str(gpt2_dir), str(tmp_path / "stream.npz"))
    assert (b.task, b.metric, b.info["kind"], b.info["hf_class"]) == ("causal_lm", PERPLEXITY, "hf", "GPT2LMHeadModel")
    x = b.dataset.x_test
    assert x.dtype == torch.int64 and tuple(x.shape) == (4, 64)          # 300 // 64 blocks, the tail dropped
    assert torch.equal(x.reshape(-1), torch.from_numpy(tokens[:256]))
    assert b.dataset.y_test.numel() == 0 and b.dataset.input_shape == (64,)
    got = evaluate(b.model, x, b.dataset.y_test, b.task, batch_size=3)
    with torch.no_grad():
        want = math.exp(float(b.model(x, labels=x).loss))               # transformers' own mean next-token loss
    assert got == pytest.approx(want, rel=1e-4)
    assert 50 < got < 3 * hf_models.GPT2_VOCAB                          # random weights: near-uniform guessing


def test_gpt2_text_file_is_tokenised_with_the_folder_tokenizer(gpt2_dir, tmp_path):
    text = " ".join(hf_models.SENTENCES * 2)
    (tmp_path / "corpus.txt").write_text(text)
    b = load_baseline(str(gpt2_dir), str(tmp_path / "corpus.txt"))
    ids = hf_models.word_tokenizer()(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < 64                                                  # shorter than a block: one block
    assert b.dataset.x_test.tolist() == [ids]
    assert math.isfinite(evaluate(b.model, b.dataset.x_test, b.dataset.y_test, b.task))


def test_token_ids_outside_the_vocabulary_are_refused(gpt2_dir, tmp_path):
    np.savez(tmp_path / "big.npz", tokens=np.array([1, 2, hf_models.GPT2_VOCAB]))
    msg = _one_line_error("vocabulary", load_baseline, str(gpt2_dir), str(tmp_path / "big.npz"))
    assert "big.npz" in msg and str(hf_models.GPT2_VOCAB) in msg
    _one_line_error("image dataset", load_baseline, str(gpt2_dir), "digits")


def test_pytorch_model_bin_loads_with_weights_only(gpt2_dir, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(gpt2_dir / "config.json", folder)
    model, _ = load_hf_folder(gpt2_dir)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    loaded, info = load_hf_folder(folder)
    x = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy(gpt2_dir / "config.json", evil)
    torch.save({"w": torch.zeros(1), "call": print}, evil / "pytorch_model.bin")   # a global: not weights only
    _one_line_error("holds Python objects, not only weights; refused", load_hf_folder, evil)


def test_model_from_hf_config_rebuilds_the_architecture(gpt2_dir):
    model, info = load_hf_folder(gpt2_dir)
    json.dumps(info)                                                      # JSON-safe, packed manifests keep it
    rebuilt = model_from_hf_config(info["hf_class"], info["hf_config"])
    assert type(rebuilt) is type(model)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())
    x = torch.arange(12)[None]
    with torch.no_grad():
        assert torch.equal(rebuilt(x).logits, model(x).logits)
    _one_line_error("not a .* class of transformers", model_from_hf_config, "AutoTokenizer", info["hf_config"])
    _one_line_error("auto_map", model_from_hf_config, info["hf_class"], {**info["hf_config"], "auto_map": {"x": "y"}})


# --- sequence and image classification --------------------------------------------------------

def test_bert_sequence_classification_accuracy(bert_dir, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, hf_models.BERT_VOCAB, (40, 12)).astype(np.int32)
    y = rng.integers(0, hf_models.BERT_LABELS, 40)
    np.savez(tmp_path / "seq.npz", x=x, y=y)
    b = load_baseline(str(bert_dir), str(tmp_path / "seq.npz"))
    assert b.task == "sequence_classification" and b.metric is ACCURACY and b.info["num_classes"] == 3
    ds = b.dataset
    assert ds.x_test.dtype == torch.int64 and ds.input_shape == (12,) and len(ds.x_test) == 10   # 75/25 split
    assert {tuple(r) for r in ds.x_test.tolist()} <= {tuple(r) for r in x.tolist()}          # ids, not standardised
    got = evaluate(b.model, ds.x_test, ds.y_test, b.task, batch_size=4)
    with torch.no_grad():
        want = float((b.model(input_ids=ds.x_test).logits.argmax(-1) == ds.y_test).double().mean())
    assert got == pytest.approx(want, abs=1e-12)
    long = rng.integers(0, hf_models.BERT_VOCAB, (8, 40))
    np.savez(tmp_path / "long.npz", x=long, y=np.zeros(8, dtype=np.int64))
    _one_line_error("at most 32", load_baseline, str(bert_dir), str(tmp_path / "long.npz"))


def test_vit_on_digits_resized_and_repeated(vit_dir):
    b = load_baseline(str(vit_dir), "digits")
    ds = b.dataset
    assert b.task == "image_classification" and ds.input_shape == (3, 16, 16)
    assert "resized 8x8 -> 16x16" in ds.note and "repeated to 3 channels" in ds.note
    assert ds.fingerprint != load_dataset("digits").fingerprint
    got = evaluate(b.model, ds.x_test, ds.y_test, b.task)
    with torch.no_grad():
        want = float((b.model(pixel_values=ds.x_test).logits.argmax(-1) == ds.y_test).double().mean())
    assert got == pytest.approx(want, abs=1e-12)


# --- refusals -----------------------------------------------------------------------------------

def test_remote_code_and_broken_folders_are_refused(gpt2_dir, tmp_path):
    remote = tmp_path / "remote"
    shutil.copytree(gpt2_dir, remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "m.Net"}}))
    assert "remote" in _one_line_error(r"needs remote code \(auto_map\); refused", load_baseline, str(remote))
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(gpt2_dir / "config.json", bare)
    assert "bare" in _one_line_error("not a Hugging Face model folder: no weights", load_baseline, str(bare))
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error("not a Hugging Face model folder: no config.json", load_baseline, str(empty))
    (bare / "config.json").write_text("[1, 2")
    (bare / "model.safetensors").write_bytes(b"")
    _one_line_error("not valid JSON", load_hf_folder, bare)


def test_without_transformers_the_folder_is_refused_in_one_line(gpt2_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)                # import transformers -> ImportError
    msg = _one_line_error("transformers is not installed: pip install transformers", load_baseline, str(gpt2_dir))
    assert str(gpt2_dir) in msg


# --- module:factory architectures and weights only ----------------------------------------------

FACTORY = """
from torch import nn

def build_net(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))

def build_other():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16))
"""


@pytest.fixture()
def factory_file(tmp_path, monkeypatch) -> Path:
    pkg = tmp_path / "pet_test_factory_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    save_state_dict(net, tmp_path / "net.safetensors")
    return tmp_path / "net.safetensors"


def test_module_factory_needs_trust(factory_file):
    arch = "pet_test_factory_pkg.nets:build_net"
    msg = _one_line_error("refused", load_baseline, str(factory_file), "digits", arch=arch)
    assert arch in msg and "--trust-code" in msg
    assert "pet_test_factory_pkg.nets" not in sys.modules                   # refused before importing anything
    b = load_baseline(str(factory_file), "digits", arch=arch, trust_code=True)
    assert b.info["factory"] == arch and b.info["trusted"] and b.arch is None
    from safetensors.torch import load_file
    state = load_file(str(factory_file))
    x = b.dataset.x_test.flatten(1)
    logits = torch.relu(x @ state["1.weight"].T + state["1.bias"]) @ state["3.weight"].T + state["3.bias"]
    assert evaluate(b.model, b.dataset.x_test, b.dataset.y_test, b.task) == pytest.approx(
        float((logits.argmax(1) == b.dataset.y_test).double().mean()), abs=1e-12)
    msg = _one_line_error("does not match", load_baseline, str(factory_file), "digits",
                          arch="pet_test_factory_pkg.nets:build_other", trust_code=True)
    assert "1.weight" in msg


def test_weights_only_baselines(factory_file, gpt2_dir):
    b = load_baseline(str(factory_file), arch="pet_test_factory_pkg.nets:build_net", trust_code=True)
    assert b.dataset is None and b.weights_only and b.metric is ACCURACY
    w = load_baseline(str(gpt2_dir))
    assert w.dataset is None and w.task == "causal_lm" and w.metric is PERPLEXITY
    args = cli.build_parser().parse_args(["evaluate", "--model", str(gpt2_dir)])   # --dataset left out
    recipe, baseline = cli._context(args)
    assert baseline.dataset is None and recipe.model == str(gpt2_dir)
    zoo = load_baseline("lenet_300_100")                                    # a zoo model still needs data: digits
    assert zoo.dataset.name == "digits"


def test_cli_dataset_comes_from_the_recipe_only_when_it_names_one(gpt2_dir, tmp_path):
    np.savez(tmp_path / "t.npz", tokens=np.arange(200) % hf_models.GPT2_VOCAB)
    (tmp_path / "plain.yaml").write_text("pet_recipe: 1\ndefault: {prune: {sparsity: 0.5}}\n")
    (tmp_path / "named.yaml").write_text(f"pet_recipe: 1\ndataset: {tmp_path / 't.npz'}\n")
    for recipe, want in (("plain.yaml", None), ("named.yaml", "t")):
        args = cli.build_parser().parse_args(["evaluate", "--model", str(gpt2_dir), "--recipe", str(tmp_path / recipe)])
        _, baseline = cli._context(args)
        assert (None if baseline.dataset is None else baseline.dataset.name) == want


def test_engine_imports_without_transformers():
    code = "import sys, pet_core.loader, pet_core.cli, pet_core.metrics; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
