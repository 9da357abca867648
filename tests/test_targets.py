"""Every weight matrix of real architectures is found, tied tensors are honest, and any model exports
packed and loads back bit-exactly: a model x check matrix over networks we did not write (transformers
models built from their configs, torch's own attention and transposed convs, a traced ResNet block).

Oracles are independent of the engine: ``model.parameters()`` (which lists a tied tensor once) for
the parameter count and the dense bytes, ``torch.nn.utils.prune`` for a layer's mask, and the
module's own forward pass for what the compressed weights compute.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from pet_core.errors import PetError
from pet_core.layers import targets
from pet_core.packed import load_packed, save_packed
from pet_core.packed.arch import program_blob
from pet_core.recipe import Recipe
from pet_core.size import model_bytes
from pet_core.workbench import Workbench

transformers = pytest.importorskip("transformers")

RECIPE = {"prune": {"sparsity": 0.5}, "quantize": {"bits": 4}}


class TransformerClassifier(nn.Module):
    """An nn.TransformerEncoder over token ids: Embedding, MHA in_proj/out_proj, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


class Decoder(nn.Module):
    """Transposed convs, a Conv3d and an EmbeddingBag: the rarer weight operations."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(20, 8, mode="mean")
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2)
        self.vol = nn.Conv3d(1, 2, (1, 3, 3))
        self.scale = nn.Parameter(torch.ones(2, 2))         # a 2-D tensor no known operation uses

    def forward(self, x):
        h = self.bag(x)[:, :, None, None]                     # (b, 8, 1, 1)
        h = self.up(h)[:, None]                               # (b, 1, 4, 3, 3)
        return self.vol(h).flatten(1)[:, :2] @ self.scale


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    return transformers.GPT2LMHeadModel(cfg).eval(), torch.randint(0, 64, (3, 16))


def _bert():
    torch.manual_seed(1)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=48, max_position_embeddings=16, num_labels=3)
    return transformers.BertForSequenceClassification(cfg).eval(), torch.randint(0, 60, (3, 12))


def _vit():
    torch.manual_seed(2)
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=48, num_labels=4)
    return transformers.ViTForImageClassification(cfg).eval(), torch.randn(3, 1, 8, 8)


def _encoder():
    torch.manual_seed(3)
    return TransformerClassifier().eval(), torch.randint(0, 50, (3, 7))


def _decoder():
    torch.manual_seed(4)
    return Decoder().eval(), torch.randint(0, 20, (3, 5))


MODELS = {"gpt2": _gpt2, "bert": _bert, "vit": _vit, "torch_encoder": _encoder, "decoder": _decoder}
HF = {"gpt2", "bert", "vit"}


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _unique_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())       # parameters() yields a tied tensor once


def _unique_values(model: nn.Module) -> int:
    return _unique_params(model) + sum(b.numel() for b in model.buffers())


@pytest.mark.parametrize("name", list(MODELS))
def test_every_weight_matrix_is_a_target_or_skipped_with_a_reason(name):
    model, _ = MODELS[name]()
    found = targets(model)
    wb = Workbench(model)
    skipped = {row["name"]: row["reason"] for row in wb.report()["skipped"]}
    covered = {id(t.parameter) for t in found.values()}
    for pname, p in model.named_parameters():
        if p.dim() < 2 or id(p) in covered:
            continue
        owner = pname.rsplit(".", 1)[0] if "." in pname else "(model)"
        assert owner in skipped and "no known weight operation" in skipped[owner], pname
    kinds = {t.type for t in found.values()}
    expected = {"gpt2": {"Conv1D", "Embedding"}, "bert": {"Linear", "Embedding"},
                "vit": {"Linear", "Conv2d"}, "torch_encoder": {"MultiheadAttention.in_proj", "Embedding"},
                "decoder": {"EmbeddingBag", "ConvTranspose2d", "Conv3d"}}[name]
    assert expected <= kinds


@pytest.mark.parametrize("name", list(MODELS))
def test_sizes_count_each_tensor_once(name):
    model, _ = MODELS[name]()
    wb = Workbench(model)
    report = wb.report()
    rows = report["layers"]
    assert sum(r["params"] for r in rows) == _unique_values(model)
    assert sum(r["size_bytes"] for r in rows) == model_bytes(model) == report["baseline"]["size_bytes"]
    assert report["compressed"][report["metric"]["name"]] is None          # weights only: not measured
    assert report["metric"]["measured"] is False


def test_gpt2_tied_embedding_is_one_target_compressed_once():
    model, _ = _gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    wb = Workbench(model)
    assert "lm_head" not in wb.names and wb.layers["transformer.wte"].tied == ("lm_head",)
    conv1d = [n for n, t in wb.layers.items() if t.type == "Conv1D"]
    assert len(conv1d) == 4 * 2                            # c_attn, c_proj, c_fc, mlp.c_proj per block
    wb.apply(Recipe(default=RECIPE))
    assert wb.model.lm_head.weight is wb.model.transformer.wte.weight   # still one tensor
    assert torch.equal(wb.model.lm_head.weight, wb.layers["transformer.wte"].weight)
    rows = {r["name"]: r for r in wb.report()["layers"]}
    assert rows["transformer.wte"]["tied"] == "lm_head" and "lm_head" not in rows
    assert not torch.equal(wb.baseline.lm_head.weight, wb.model.lm_head.weight)
    assert torch.equal(wb.baseline.lm_head.weight, wb.baseline.transformer.wte.weight)   # baseline untouched


def test_conv1d_prunes_its_output_features():
    """HF Conv1D stores (in, out): an output feature is a *column*; channel pruning must zero columns."""
    model, x = _gpt2()
    wb = Workbench(model)
    wb.apply(Recipe(default={"prune": {"method": "l1_channel", "sparsity": 0.25}}))
    stored = wb.model.transformer.h[0].mlp.c_fc.weight                  # (in=32, out=128)
    dead_cols = int((stored == 0).all(0).sum())
    assert dead_cols == round(0.25 * stored.shape[1])
    assert int((stored == 0).all(1).sum()) == 0                          # no input row removed
    norms = wb.baseline.transformer.h[0].mlp.c_fc.weight.abs().sum(0)   # oracle: L1 norm per output feature
    assert set(torch.nonzero((stored == 0).all(0)).flatten().tolist()) == set(
        torch.argsort(norms)[:dead_cols].tolist())


def test_multihead_in_proj_is_compressed_and_used():
    model, x = _encoder()
    wb = Workbench(model)
    layer = "encoder.layers.0.self_attn.in_proj"
    assert layer in wb.names and wb.layers[layer].bias is not None
    wb.apply(Recipe(default={"prune": {"sparsity": 0.5, "scope": "layer"}}))
    w = wb.model.encoder.layers[0].self_attn.in_proj_weight
    assert int((w == 0).sum()) == w.numel() // 2
    base = wb.baseline.encoder.layers[0].self_attn.in_proj_weight.detach()
    mask = torch_prune.L1Unstructured(0.5).compute_mask(base, torch.ones_like(base))   # torch's own choice
    assert torch.equal(w != 0, mask.bool())
    assert not torch.allclose(wb.model(x), wb.baseline(x))                 # the forward runs on the new weights


@pytest.mark.parametrize("name", sorted(HF))
def test_hf_models_export_packed_and_load_back_bit_exactly(name, tmp_path):
    from pet_core.hf import hf_info

    model, x = MODELS[name]()
    wb = Workbench(model)
    wb.apply(Recipe(default=RECIPE))
    task = {"gpt2": "causal_lm", "bert": "sequence_classification", "vit": "image_classification"}[name]
    info = hf_info(model, task)
    out = save_packed(wb, tmp_path / "m.petz", huffman=True,
                      model_info=dict(source="hf", hf_class=info["hf_class"], hf_config=info["hf_config"], task=task))
    assert out["file_bytes"] < out["baseline_bytes"] / 4
    back, meta = load_packed(tmp_path / "m.petz")
    assert meta["model"]["source"] == "hf"
    ours, theirs = wb.model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.no_grad():
        assert torch.equal(_logits(wb.model(x)), _logits(back(x)))


def _traced_resnet_block():
    torch.manual_seed(5)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 3, 3, padding=1, bias=False)
            self.fc = nn.Linear(3 * 8 * 8, 5, bias=False)

        def forward(self, x):
            return self.fc((x + self.conv2(torch.relu(self.bn1(self.conv1(x))))).flatten(1))

    x = torch.randn(4, 3, 8, 8)
    return torch.jit.trace(Block().eval(), x[:1]), x


def test_torchscript_export_needs_trust_to_load_back(tmp_path):
    scripted, x = _traced_resnet_block()
    wb = Workbench(scripted, x, torch.arange(4) % 5)
    wb.apply(Recipe(default=RECIPE))
    out = save_packed(wb, tmp_path / "s.petz", model_info=dict(source="program", program="torchscript"))
    assert out["program_bytes"] < 0.2 * model_bytes(scripted) + 16_000    # the code, its tensors zeroed
    with pytest.raises(PetError, match="TorchScript|torchscript") as err:
        load_packed(tmp_path / "s.petz")
    assert "trust" in str(err.value) and "\n" not in str(err.value)
    back, _ = load_packed(tmp_path / "s.petz", trust_code=True)
    with torch.no_grad():
        assert torch.equal(back(x), wb.model(x))


def test_program_blob_holds_no_weights():
    scripted, _ = _traced_resnet_block()
    blob = program_blob(scripted, "torchscript")
    loaded = torch.jit.load(io.BytesIO(__import__("zlib").decompress(blob)))
    assert all(float(p.detach().abs().sum()) == 0 for p in loaded.parameters())
    assert math.isclose(sum(p.numel() for p in loaded.parameters()), _unique_params(scripted))


def test_finetuning_refuses_what_it_cannot_train_in_one_line():
    from pet_core.data import load_dataset
    from pet_core.finetune.loop import check_trainable

    model, _ = _gpt2()
    with pytest.raises(PetError, match="weights-only"):
        check_trainable(Workbench(model), None)
    digits = load_dataset("digits")
    with pytest.raises(PetError, match=r"Linear/Conv1d/Conv2d layers only; .* such as transformer.wte \(Embedding\)"):
        check_trainable(Workbench(model), digits)
    check_trainable(Workbench(nn.Sequential(nn.Flatten(), nn.Linear(64, 10))), digits)   # a plain classifier trains


def test_a_session_holds_one_copy_of_each_compressed_weight_and_the_baseline_stays_put():
    model, x = _gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wb = Workbench(model)
    wb.apply(Recipe(default=RECIPE))
    for name, t in wb.layers.items():
        stored = wb.result(name).tensors[0]
        assert stored.values.untyped_storage().data_ptr() == t.parameter.untyped_storage().data_ptr(), name
        assert stored.values.is_contiguous()                  # Conv1D's parameter is a transposed view of it
        assert stored.codes is None                           # codes are not kept; packing recomputes them
        coded = wb.coded_tensors(name)[0]
        assert torch.equal(coded.values, stored.values) and coded.codes.shape == stored.values.shape
    wb.apply(Recipe(default={"prune": {"sparsity": 0.7}}))   # rewrite every layer again
    wb.apply(Recipe())                                        # and back to the baseline
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())        # the baseline untouched
    assert all(torch.equal(before[k], v) for k, v in wb.model.state_dict().items())     # the copy restored
    with torch.no_grad():
        assert torch.equal(wb.model(x).logits, model(x).logits)


def test_the_huffman_size_is_computed_on_request():
    model, _ = _gpt2()
    wb = Workbench(model)
    wb.apply(Recipe(default=RECIPE))
    assert wb.report(huffman=False)["compressed"]["size_bytes_huffman"] is None
    asked = wb.report(huffman=True)["compressed"]["size_bytes_huffman"]
    assert asked == wb.size_bytes_huffman() == wb.report()["compressed"]["size_bytes_huffman"]   # small: eager


def test_layers_rewritten_and_sized_in_threads_equal_the_serial_ones(monkeypatch):
    import pet_core.workbench as workbench

    model, _ = _gpt2()
    serial, threaded = Workbench(model), Workbench(model)
    monkeypatch.setattr(workbench, "PARALLEL_SIZES_WEIGHTS", 1 << 62)
    serial.apply(Recipe(default=RECIPE))
    want = [r.as_dict() for r in serial.sizes()]
    monkeypatch.setattr(workbench, "PARALLEL_SIZES_WEIGHTS", 0)          # every rewrite and size in threads
    assert threaded.apply(Recipe(default=RECIPE)) == serial.names
    assert [r.as_dict() for r in threaded.sizes()] == want
    ours, theirs = serial.model.state_dict(), threaded.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
