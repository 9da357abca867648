"""Recipes: parsing, YAML/JSON round trips, validation messages, and layer override resolution."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from pet_core.errors import PetError
from pet_core.recipe import Recipe, dumps, load, loads, save
from pet_core.methods.channel import ChannelConfig
from pet_core.methods.magnitude import MagnitudeConfig
from pet_core.methods.quantize import QuantizeConfig
from pet_core.methods.share import ShareConfig
from pet_core.steps import EXCLUSIVE, STEPS, LayerSpec, describe_steps, resolve

# The example recipe, as shipped.
EXAMPLE = (Path(__file__).resolve().parents[1] / "assets" / "recipes" / "example.yaml").read_text()

LENET_LAYERS = ["fc1", "fc2", "fc3"]


def _recipe(default=None, layers=None, **top):
    data = {"pet_recipe": 1, "default": default or {}}
    if layers is not None:
        data["layers"] = layers
    data.update(top)
    return data


def _error(data) -> str:
    with pytest.raises(PetError) as info:
        Recipe.from_dict(data)
    msg = str(info.value)
    assert "\n" not in msg, "PetError messages are one line"
    return msg


# --- the example ----------------------------------------------------------------------

def test_example_parses():
    r = loads(EXAMPLE)
    assert r.model == "lenet_300_100" and r.dataset == "digits"
    assert r.to_dict()["default"] == {
        "prune": {"method": "magnitude", "scope": "global", "sparsity": 0.9},
        "quantize": {"bits": 4, "scheme": "symmetric", "granularity": "per_channel"},
    }
    assert r.default["prune"] == MagnitudeConfig(sparsity=0.9) and r.default["quantize"] == QuantizeConfig(bits=4)
    assert r.to_dict()["layers"] == {"fc3": {"prune": {"sparsity": 0.5}, "quantize": {"bits": 8}}}
    assert isinstance(r.default["quantize"].bits, int)
    assert isinstance(r.default["prune"].sparsity, float)


def test_example_resolves_per_layer():
    r = loads(EXAMPLE)
    specs = resolve(r.default, r.layers, LENET_LAYERS)
    q4 = QuantizeConfig(bits=4, scheme="symmetric", granularity="per_channel")
    for name in ("fc1", "fc2"):
        assert specs[name] == LayerSpec(prune=MagnitudeConfig("magnitude", "global", 0.9), quantize=q4)
    # fc3's own sparsity prunes it on its own; its bits override keeps the other quantize fields
    q8 = QuantizeConfig(bits=8, scheme="symmetric", granularity="per_channel")
    assert specs["fc3"] == LayerSpec(prune=MagnitudeConfig("magnitude", "layer", 0.5), quantize=q8)


# --- round trips --------------------------------------------------------------------------------

ROUND_TRIP = [
    EXAMPLE,
    "pet_recipe: 1\n",
    "pet_recipe: 1\nmodel: resnet_mini\ndefault: {low_rank: {energy: 0.95}, share: {clusters: 32}}\n",
    "pet_recipe: 1\ndefault: {prune: {method: l2_channel, scope: layer, threshold: 0.125}}\n"
    "layers: {'block*.conv?': {prune: null, quantize: {bits: 3, scheme: asymmetric}}, fc: {share: {clusters: 2}},"
    " 'stem.conv': {low_rank: {rank: 3}}}\n",
]


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize("text", ROUND_TRIP, ids=range(len(ROUND_TRIP)))
def test_round_trip_unchanged(text, fmt):
    r = loads(text)
    out = dumps(r, fmt)
    again = loads(out, fmt)
    assert again.to_dict() == r.to_dict()
    assert dumps(again, fmt) == out, "dumping twice gives the same text"
    assert dumps(r, fmt) == out


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_save_load_file(tmp_path, suffix):
    r = loads(EXAMPLE)
    path = tmp_path / f"r{suffix}"
    save(r, path)
    assert load(path).to_dict() == r.to_dict()
    if suffix == ".json":
        assert path.read_text().lstrip().startswith("{")


def test_to_dict_is_a_copy():
    r = loads(EXAMPLE)
    d = r.to_dict()
    d["default"]["prune"]["sparsity"] = 0.1
    assert r.default["prune"].sparsity == 0.9


# --- validation: the message names the key, the value and what is allowed ------------------------

def _prune(**kw):
    return _recipe({"prune": {"sparsity": 0.5, **kw}})


@pytest.mark.parametrize("data, needles", [
    (_recipe(modle="x"), ["modle", "allowed", "pet_recipe", "model", "dataset", "default", "layers"]),
    (_recipe({"prunee": {"sparsity": 0.5}}), ["default.prunee", "allowed", "prune", "quantize", "share", "low_rank"]),
    (_recipe({"prune": {"sparsty": 0.5}}), ["default.prune.sparsty", "allowed", "sparsity", "threshold"]),
    (_recipe({"prune": {"sparsity": 1.5}}), ["default.prune.sparsity", "1.5", "[0, 1]"]),
    (_recipe({"prune": {"sparsity": -0.1}}), ["default.prune.sparsity", "-0.1", "[0, 1]"]),
    (_recipe({"prune": {"threshold": -1}}), ["default.prune.threshold", "-1", "[0, inf)"]),
    (_prune(method="random"), ["default.prune.method", "'random'", "magnitude", "l1_channel", "l2_channel"]),
    (_prune(scope="model"), ["default.prune.scope", "'model'", "global", "layer"]),
    (_recipe({"quantize": {"bits": 9}}), ["default.quantize.bits", "9", "1-8 or 16"]),
    (_recipe({"quantize": {"bits": 0}}), ["default.quantize.bits", "0", "1-8 or 16"]),
    (_recipe({"quantize": {"bits": 4.5}}), ["default.quantize.bits", "4.5", "integer"]),
    (_recipe({"quantize": {"scheme": "foo"}}), ["default.quantize.scheme", "'foo'", "symmetric", "asymmetric"]),
    (_recipe({"quantize": {"granularity": "per_row"}}),
     ["default.quantize.granularity", "'per_row'", "per_channel", "per_tensor"]),
    (_recipe({"share": {"clusters": 1}}), ["default.share.clusters", "1", "[2, 256]"]),
    (_recipe({"share": {"clusters": 300}}), ["default.share.clusters", "300", "[2, 256]"]),
    (_recipe({"low_rank": {"energy": 0}}), ["default.low_rank.energy", "0", "(0, 1]"]),
    (_recipe({"low_rank": {"energy": 1.2}}), ["default.low_rank.energy", "1.2", "(0, 1]"]),
    (_recipe({"low_rank": {"rank": 0}}), ["default.low_rank.rank", "0", "[1, inf)"]),
    (_recipe({"prune": {"sparsity": "half"}}), ["default.prune.sparsity", "'half'", "number"]),
    (_recipe({"prune": {"sparsity": True}}), ["default.prune.sparsity", "True", "number"]),
    (_recipe({"prune": {"sparsity": 0.5, "threshold": 0.1}}), ["default.prune", "sparsity", "threshold"]),
    (_recipe({"prune": {"method": "magnitude"}}), ["default.prune", "sparsity", "threshold"]),
    (_recipe({"low_rank": {"energy": 0.5, "rank": 2}}), ["default.low_rank", "energy", "rank"]),
    (_recipe({"low_rank": {}}), ["default.low_rank", "energy", "rank"]),
    (_recipe({"prune": None}), ["default.prune", "null"]),
    (_recipe({"prune": {"sparsity": None}}), ["default.prune.sparsity", "null"]),
    (_recipe({"quantize": {"bits": 4}, "share": {"clusters": 4}}), ["default", "quantize", "share"]),
    (_recipe(layers={"fc3": {"prune": {"sparsity": 2}}}), ["layers.fc3.prune.sparsity", "2", "[0, 1]"]),
    (_recipe(layers={"fc3": {"quantise": {"bits": 4}}}), ["layers.fc3.quantise", "allowed", "quantize"]),
    (_recipe(layers=["fc3"]), ["layers", "mapping"]),
    (_recipe(model=""), ["model", "''"]),
    (_recipe(model=3), ["model", "3"]),
    ({"default": {}}, ["pet_recipe", "None", "allowed: 1"]),
    (_recipe(pet_recipe=2), ["pet_recipe", "2", "allowed: 1"]),
    (["pet_recipe", 1], ["mapping", "list"]),
])
def test_validation_message(data, needles):
    msg = _error(data)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


@pytest.mark.parametrize("step, key, value", [
    ("prune", "sparsity", float("nan")),
    ("prune", "threshold", float("nan")),
    ("low_rank", "energy", float("nan")),
])
def test_nan_is_out_of_range(step, key, value):
    msg = _error(_recipe({step: {key: value}}))
    assert f"default.{step}.{key}" in msg and "nan" in msg


@pytest.mark.parametrize("step, key", [("quantize", "bits"), ("share", "clusters"), ("low_rank", "rank")])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_integer_fields(step, key, value):
    msg = _error(_recipe({step: {key: value}}))
    assert f"default.{step}.{key}" in msg and "integer" in msg


def test_nan_in_yaml_text():
    with pytest.raises(PetError, match=r"default\.prune\.sparsity = nan"):
        loads("pet_recipe: 1\ndefault: {prune: {sparsity: .nan}}\n")


@pytest.mark.parametrize("fmt, text", [
    ("yaml", "pet_recipe: 1\ndefault: {prune: {sparsity: 0.5}\n"),
    ("yaml", "pet_recipe: 1\n  default:\n bad"),
    ("json", '{"pet_recipe": 1, "default": {'),
])
def test_bad_text(fmt, text):
    with pytest.raises(PetError, match=f"not valid {fmt.upper()}") as info:
        loads(text, fmt)
    assert "\n" not in str(info.value)


def test_top_level_not_a_mapping_in_text():
    with pytest.raises(PetError, match="mapping"):
        loads("- 1\n- 2\n")


def test_load_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("pet_recipe: 1\ndefault: {quantize: {bits: 9}}\n")
    with pytest.raises(PetError, match=r"mine\.yaml: .*bits = 9"):
        load(path)
    with pytest.raises(PetError, match="not found"):
        load(tmp_path / "absent.yaml")


def test_unknown_format():
    with pytest.raises(PetError, match="toml"):
        dumps(loads(EXAMPLE), "toml")


def test_accepted_edges():
    r = Recipe.from_dict(_recipe({"prune": {"sparsity": 0}, "low_rank": {"energy": 1}, "share": {"clusters": 256}},
                                 {"fc1": {"share": {"clusters": 2}}, "fc2": {"quantize": {"bits": 16}}}))
    assert r.default["prune"].sparsity == 0.0 and isinstance(r.default["prune"].sparsity, float)
    assert r.default["share"].clusters == 256
    # integers given as whole floats are normalised to int
    r = Recipe.from_dict(_recipe({"quantize": {"bits": 4.0}}))
    assert r.default["quantize"].bits == 4 and isinstance(r.default["quantize"].bits, int)


def test_replace_validates():
    r = loads(EXAMPLE)
    r2 = r.replace(model="mnist_cnn")
    assert r2.model == "mnist_cnn" and r2.default == r.default
    with pytest.raises(PetError, match="sparsity"):
        r.replace(default={"prune": {"sparsity": 3}})


# --- resolve: layer override semantics ----------------------------------------------------------

def _specs(default, layers, names=LENET_LAYERS):
    r = Recipe.from_dict(_recipe(default, layers))
    return resolve(r.default, r.layers, names)


def test_no_layers_everyone_gets_default():
    specs = _specs({"quantize": {"bits": 4}}, None)
    assert set(specs) == set(LENET_LAYERS)
    assert all(s == LayerSpec(quantize=QuantizeConfig(bits=4)) for s in specs.values())


def test_empty_recipe_is_identity():
    specs = _specs({}, None)
    assert all(s.is_identity for s in specs.values())


def test_glob_matches_all_fc():
    specs = _specs({}, {"fc*": {"quantize": {"bits": 6}}})
    assert all(specs[n].quantize == QuantizeConfig(bits=6) for n in LENET_LAYERS)


def test_glob_and_exact_name():
    names = ["features.0", "features.3", "classifier.0", "classifier.2"]
    specs = _specs({"quantize": {"bits": 8}}, {"features.*": {"quantize": {"bits": 4}}, "classifier.2": {
        "quantize": None}}, names)
    assert specs["features.0"].quantize.bits == 4 and specs["features.3"].quantize.bits == 4
    assert specs["classifier.0"].quantize.bits == 8
    assert specs["classifier.2"].is_identity


def test_exact_name_only_that_layer():
    specs = _specs({"prune": {"sparsity": 0.9}}, {"fc2": {"prune": {"sparsity": 0.3}}})
    assert specs["fc1"].prune == MagnitudeConfig(scope="global", sparsity=0.9)
    assert specs["fc3"].prune == MagnitudeConfig(scope="global", sparsity=0.9)
    assert specs["fc2"].prune == MagnitudeConfig(scope="layer", sparsity=0.3)


def test_exact_name_is_not_a_glob_prefix():
    # "fc1" must not match "fc10" (exact names and globs match whole names)
    specs = _specs({}, {"fc1": {"quantize": {"bits": 2}}}, ["fc1", "fc10"])
    assert specs["fc1"].quantize.bits == 2 and specs["fc10"].quantize is None


def test_override_threshold_drops_default_sparsity_and_scopes_layer():
    specs = _specs({"prune": {"method": "l1_channel", "sparsity": 0.5}}, {"fc3": {"prune": {"threshold": 0.2}}})
    assert specs["fc3"].prune == ChannelConfig(method="l1_channel", scope="layer", threshold=0.2)
    assert specs["fc1"].prune == ChannelConfig(method="l1_channel", scope="global", sparsity=0.5)


def test_override_keeps_explicit_scope():
    specs = _specs({"prune": {"sparsity": 0.9}}, {"fc3": {"prune": {"sparsity": 0.5, "scope": "global"}}})
    assert specs["fc3"].prune == MagnitudeConfig(scope="global", sparsity=0.5)


def test_override_without_amount_keeps_default_scope():
    specs = _specs({"prune": {"sparsity": 0.9}}, {"fc3": {"prune": {"method": "l2_channel"}}})
    assert specs["fc3"].prune == ChannelConfig(method="l2_channel", scope="global", sparsity=0.9)


def test_override_energy_rank_pair():
    specs = _specs({"low_rank": {"energy": 0.9}}, {"fc1": {"low_rank": {"rank": 5}}})
    assert specs["fc1"].low_rank.rank == 5 and specs["fc1"].low_rank.energy is None
    assert specs["fc2"].low_rank.energy == 0.9 and specs["fc2"].low_rank.rank is None


def test_share_override_switches_off_default_quantize():
    specs = _specs({"quantize": {"bits": 4}}, {"fc3": {"share": {"clusters": 8}}})
    assert specs["fc3"] == LayerSpec(share=ShareConfig(clusters=8))
    assert specs["fc1"] == LayerSpec(quantize=QuantizeConfig(bits=4))


def test_quantize_override_switches_off_default_share():
    specs = _specs({"share": {"clusters": 16}}, {"fc1": {"quantize": {"bits": 8}}})
    assert specs["fc1"] == LayerSpec(quantize=QuantizeConfig(bits=8))
    assert specs["fc2"] == LayerSpec(share=ShareConfig(clusters=16))
    assert EXCLUSIVE == {"quantize": "share", "share": "quantize"}


def test_null_switches_step_off():
    specs = _specs({"prune": {"sparsity": 0.9}, "quantize": {"bits": 4}}, {"fc3": {"prune": None}})
    assert specs["fc3"] == LayerSpec(quantize=QuantizeConfig(bits=4))
    specs = _specs({"prune": {"sparsity": 0.9}, "quantize": {"bits": 4}}, {"fc3": {"prune": None, "quantize": None}})
    assert specs["fc3"].is_identity and not specs["fc2"].is_identity


def test_later_patterns_win():
    specs = _specs({}, {"fc*": {"quantize": {"bits": 4, "scheme": "asymmetric"}}, "fc3": {"quantize": {"bits": 8}}})
    assert specs["fc3"].quantize == QuantizeConfig(bits=8, scheme="asymmetric")     # merged field by field
    assert specs["fc1"].quantize == QuantizeConfig(bits=4, scheme="asymmetric")
    # the other order: the glob comes last and overrides the exact name
    specs = _specs({}, {"fc3": {"quantize": {"bits": 8}}, "fc*": {"quantize": {"bits": 4}}})
    assert specs["fc3"].quantize.bits == 4
    # a later null wins over an earlier setting, and a later setting over an earlier null
    specs = _specs({}, {"fc3": {"share": {"clusters": 4}}, "fc*": {"share": None}})
    assert specs["fc3"].is_identity
    specs = _specs({"share": {"clusters": 4}}, {"fc*": {"share": None}, "fc2": {"share": {"clusters": 8}}})
    assert specs["fc2"].share == ShareConfig(clusters=8) and specs["fc1"].share is None


def test_resolve_does_not_mutate_recipe():
    r = loads(EXAMPLE)
    before = r.to_dict()
    resolve(r.default, r.layers, LENET_LAYERS)
    resolve(r.default, r.layers, LENET_LAYERS)
    assert r.to_dict() == before


def test_pattern_matching_nothing():
    r = Recipe.from_dict(_recipe({"prune": {"sparsity": 0.5}}, {"fc9": {"prune": {"sparsity": 0.1}}}))
    with pytest.raises(PetError) as info:
        resolve(r.default, r.layers, LENET_LAYERS)
    msg = str(info.value)
    assert "'fc9'" in msg and "matches no" in msg
    assert all(n in msg for n in LENET_LAYERS), "the message lists the layers there are"
    r = Recipe.from_dict(_recipe({}, {"conv*": {"quantize": {"bits": 4}}}))
    with pytest.raises(PetError, match=re.escape("'conv*'")):
        resolve(r.default, r.layers, LENET_LAYERS)


def test_layer_with_both_quantize_and_share():
    r = Recipe.from_dict(_recipe({}, {"fc1": {"quantize": {"bits": 4}, "share": {"clusters": 4}}}))
    with pytest.raises(PetError, match="fc1.*quantize and share"):
        resolve(r.default, r.layers, LENET_LAYERS)


def test_partial_override_without_default_is_an_error():
    # an override may leave out the amount only when the default supplies it
    r = Recipe.from_dict(_recipe({}, {"fc1": {"prune": {"method": "l1_channel"}}}))
    with pytest.raises(PetError, match="layer fc1.*sparsity or threshold"):
        resolve(r.default, r.layers, LENET_LAYERS)


def test_specs_are_hashable_cache_keys():
    a = _specs({"prune": {"sparsity": 0.5}}, None)
    b = _specs({"prune": {"sparsity": 0.5}}, None)
    c = _specs({"prune": {"sparsity": 0.6}}, None)
    assert a["fc1"] == b["fc1"] and hash(a["fc1"]) == hash(b["fc1"])
    assert a["fc1"] != c["fc1"]


# --- describe_steps ------------------------------------------------------------------------------

def _configs():
    """(step, method name, config class) of every registered method."""
    return [(step, m.name, m.config) for step, methods in STEPS.items() for m in methods]


def test_describe_steps_covers_every_field():
    rows = describe_steps()
    expected = {(step, name, f.name) for step, name, cls in _configs() for f in cls.data_fields()}
    got = [(r["step"], r["method"], r["field"]) for r in rows]
    assert len(got) == len(set(got)) and set(got) == expected
    by_key = {(r["step"], r["field"]): r for r in rows}      # the first method's row
    for step, name, cls in _configs():
        for f in cls.data_fields():
            row = next(r for r in rows if (r["step"], r["method"], r["field"]) == (step, name, f.name))
            assert row["default"] == (name if f.name == "method" else f.default)
            assert row["help"] and row["allowed"]
    assert by_key[("prune", "sparsity")]["allowed"] == "[0, 1]"
    assert by_key[("low_rank", "energy")]["allowed"] == "(0, 1]"
    assert by_key[("low_rank", "rank")]["allowed"] == "[1, inf)"
    assert by_key[("share", "clusters")]["allowed"] == "[2, 256]"
    assert by_key[("quantize", "scheme")]["allowed"] == "symmetric, asymmetric"
    assert by_key[("quantize", "bits")]["allowed"].split(", ") == [str(b) for b in (1, 2, 3, 4, 5, 6, 7, 8, 16)]


@pytest.mark.parametrize("step", list(STEPS))
def test_every_field_is_validated(step):
    """Each field listed by describe_steps rejects a wrong-typed value with its own name in the message."""
    for m in STEPS[step]:
        for f in m.config.data_fields():
            several = len(STEPS[step]) > 1 and f.name != "method"
            data = {"method": m.name, f.name: [1]} if several else {f.name: [1]}
            with pytest.raises(PetError) as info:
                Recipe.from_dict(_recipe({step: data}))
            assert f"default.{step}.{f.name}" in str(info.value)


def test_defaults_are_within_their_own_ranges():
    for step, name, cls in _configs():
        for f in cls.data_fields():
            m = f.metadata
            if f.default is None:
                continue
            if m["choices"]:
                assert f.default in m["choices"]
            else:
                assert m["lo"] <= f.default <= m["hi"] and not math.isnan(f.default)
