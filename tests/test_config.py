import json

import pytest
import yaml

from adatsq.config import (
    METHOD_OPTIONS,
    ActivationSpec,
    AdaTSQOptions,
    CalibrationSpec,
    Recipe,
    SVDQuantOptions,
    WeightSpec,
)
from adatsq.methods import method_names


def test_recipe_roundtrips_json_and_yaml(tmp_path):
    r = Recipe(method="rtn", weights=WeightSpec(bits=3, group_size=64),
               activations=ActivationSpec(bits=4, granularity="group"),
               calibration=CalibrationSpec(num_prompts=8, steps=10))
    assert Recipe.from_dict(json.loads(r.dumps())) == r
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r.to_dict()))
    assert Recipe.load(tmp_path / "r.yaml") == r
    assert r.label == "W3A4"


@pytest.mark.parametrize("data,match", [
    ({"method": "rtn", "bogus": 1}, "unknown key"),
    ({"method": "rtn", "weights": {"bits": 4, "grp": 3}}, "unknown key"),
    ({"method": "nope"}, "unknown method"),
    ({"weights": {"bits": 9}}, "weight bit width"),
    ({"activations": {"bits": 1}}, "activation bit width"),
    ({"activations": {"granularity": "channel"}}, "granularity"),
    ({"calibration": {"num_prompts": 0}}, "at least one prompt"),
    ({"version": 99}, "version"),
])
def test_recipe_rejects_bad_input(data, match):
    with pytest.raises(ValueError, match=match):
        Recipe.from_dict(data)


def test_recipe_is_frozen():
    with pytest.raises(AttributeError):
        Recipe().method = "gptq"


def test_every_method_has_typed_options_serialized_in_full():
    assert set(METHOD_OPTIONS) == set(method_names())
    r = Recipe(method="adatsq", options={"tau": 3.0})
    assert isinstance(r.options, AdaTSQOptions) and r.options.changed() == {"tau": 3.0}
    data = json.loads(r.dumps())
    assert data["options"]["mix"] == AdaTSQOptions().mix  # defaults are written out
    assert data["version"] == 2 and Recipe.from_dict(data) == r
    old = {**data, "version": 1, "options": {"tau": 3.0}}  # a version-1 recipe: given keys only
    assert Recipe.from_dict(old) == r
    assert Recipe(method="svdquant", options=SVDQuantOptions(rank=8)).options.rank == 8
    with pytest.raises(ValueError, match="takes SVDQuantOptions"):
        Recipe(method="svdquant", options=AdaTSQOptions())
    with pytest.raises(ValueError, match="unknown key"):
        Recipe(method="quarot", options={"gptq": False})
