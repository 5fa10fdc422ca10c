"""config.json through the typed RunConfig: old runs load unchanged, and a resumed run is
checked field by field against what the command gives."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from styletx.contract.errors import UsageError
from styletx.engine.run_config import FIXED, MAY_CHANGE, RunConfig, TrainPlan

# A config.json as a run of an earlier version wrote it: no seed, no "aligned", no shapes, and
# a key this version does not know.
OLD = {
    "styletx_version": "0.0.9",
    "translator": "cyclegan",
    "preset": "tiny",
    "config": {"ngf": 8, "ndf": 8},
    "domain": "image",
    "encoders": {side: {"name": "rgb", "params": {}, "channels": 3} for side in "ab"},
    "data": {"a": "/data/a", "b": "/data/b"},
    "train": {"steps": 100, "batch_size": 1, "size": 32},
    "step": 40,
    "notes": {"from": "a future or past version"},
}


def test_an_old_config_loads_and_is_written_back_with_what_it_had():
    config = RunConfig.from_json(copy.deepcopy(OLD))
    assert (config.translator, config.step, config.train.seed) == ("cyclegan", 40, 0)
    assert config.data.aligned is False and config.data.b == "/data/b" and config.shapes == {}
    written = config.to_json()
    assert written["notes"] == OLD["notes"]  # unknown keys are kept
    for key in ("translator", "preset", "config", "domain", "encoders", "step"):
        assert written[key] == OLD[key]
    assert written["train"] == {**OLD["train"], "seed": 0, "balance": None}
    assert list(written)[0] == "styletx_version"


def test_every_field_says_whether_a_resume_may_change_it():
    config = RunConfig.from_json(copy.deepcopy(OLD))
    rules = {path: field.metadata["on_resume"] for path, field, _ in config._fields()}
    assert rules["train.steps"] == MAY_CHANGE
    assert all(rule == FIXED for path, rule in rules.items() if path != "train.steps")
    assert {f.name for f in dataclasses.fields(TrainPlan)} == {"steps", "batch_size", "size",
                                                               "seed", "balance"}
    assert "train.balance" not in rules  # --balance and its options: balance_as_saved


@pytest.mark.parametrize("given, message", [
    ({"preset": "default"}, "trained with --preset tiny, not default"),
    ({"train.size": 64}, "trained with --size 32, not 64"),
    ({"encoders": "gray"}, "trained with --encoder rgb, not gray"),
    ({"data.a": "/elsewhere"}, "trained with A_DIR /data/a, not /elsewhere"),
    ({"train.seed": 3}, "trained with --seed 0, not 3"),
])
def test_a_resume_that_contradicts_the_run_is_refused(given, message):
    config = RunConfig.from_json(copy.deepcopy(OLD))
    with pytest.raises(UsageError, match=message):
        config.check_resume(given, {})


def test_a_resume_may_extend_the_run_and_repeat_its_settings():
    config = RunConfig.from_json(copy.deepcopy(OLD))
    config.check_resume({"preset": "tiny", "train.steps": 500, "train.size": None}, {"ngf": 8})
    with pytest.raises(UsageError, match="trained with ngf=8, not the --set ngf=16; leave it out"):
        config.check_resume({}, {"ngf": 16})


def test_written_back_without_an_extra_key_and_unknown_keys_once():
    written = RunConfig.from_json(copy.deepcopy(OLD)).to_json()
    assert "extra" not in written and written["notes"] == OLD["notes"]
    assert set(written) == set(OLD) | {"shapes", "plugins"}  # fields added since: defaults


@pytest.mark.parametrize("damage", [{"data": None}, {"train": {"steps": 3}}, {"data": "x"}])
def test_a_config_with_a_field_of_the_wrong_kind_is_one_line(tmp_path, damage):
    import json

    from styletx.contract.errors import StyletxError

    (tmp_path / "config.json").write_text(json.dumps({**OLD, **damage}))
    with pytest.raises(StyletxError, match="config.json: unreadable run config") as caught:
        RunConfig.read(tmp_path)
    assert "\n" not in str(caught.value)
