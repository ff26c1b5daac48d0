"""The two foundations every layer uses: atomic writes (mmada.files) and typed-config plumbing (mmada.config)."""

import json
import os
from typing import Literal

import pytest
from PIL import Image
from pydantic import Field, ValidationError

from mmada.config import Strict, apply_overrides, load_config, parse_override, read_yaml, validate
from mmada.errors import ConfigError, SamplerError
from mmada.files import (
    atomic_dir,
    atomic_write,
    remove_partials,
    save_png,
    sha256_dir,
    write_csv,
    write_json,
    write_jsonl,
)

# ---------------------------------------------------------------------------------------------
# files


def test_writers_put_complete_files_in_place(tmp_path):
    p = write_json(tmp_path / "a" / "b.json", {"x": [1, 2]})  # the target comes first, parents are made
    assert json.loads(p.read_text()) == {"x": [1, 2]} and p.read_text().endswith("\n")
    write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}, {"b": tmp_path}])  # non-JSON values as strings
    assert [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()] == [{"a": 1}, {"b": str(tmp_path)}]
    write_csv(tmp_path / "c.csv", ["step", "loss"], [[1, 0.5], [2, 0.25]])
    assert (tmp_path / "c.csv").read_text() == "step,loss\n1,0.5\n2,0.25\n"
    save_png(tmp_path / "i.png", Image.new("RGB", (3, 2), (1, 2, 3)))
    assert Image.open(tmp_path / "i.png").getpixel((0, 0)) == (1, 2, 3)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a", "c.csv", "i.png", "rows.jsonl"]  # no temporaries


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_json(tmp_path / "ref.json", {"version": 1})
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b'{"version": 2, "trunc')
        raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"version": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["ref.json"]


def test_atomic_dir_replaces_a_directory_whole_or_not_at_all(tmp_path):
    target = tmp_path / "export"
    with atomic_dir(target) as d:
        (d / "config.json").write_text("{}")
        (d / "sub").mkdir()
        (d / "sub" / "w.bin").write_bytes(b"1")
    first = sha256_dir(target)
    assert (target / "sub" / "w.bin").read_bytes() == b"1"
    assert oct(target.stat().st_mode & 0o777) != oct(0o700)  # shared permissions, not mkdtemp's private ones
    with pytest.raises(ValueError), atomic_dir(target) as d:
        (d / "config.json").write_text('{"new": true}')
        raise ValueError("export failed half way")
    assert sha256_dir(target) == first  # the complete old export is still there
    with atomic_dir(target) as d:
        (d / "config.json").write_text('{"new": true}')
    assert sha256_dir(target) != first and not (target / "sub").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["export"]


def test_atomic_dir_for_a_shared_cache_keeps_the_first_copy(tmp_path):
    target = tmp_path / "cache"
    with atomic_dir(target, replace=False) as first:
        (first / "f").write_text("first")
        with atomic_dir(target, replace=False) as second:  # another process fills the same entry meanwhile
            (second / "f").write_text("second")
    assert (target / "f").read_text() == "second"  # it finished first; the later copy is dropped
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cache"]


def test_remove_partials_cleans_up_after_a_crash(tmp_path):
    (tmp_path / "keep.json").write_text("{}")
    (tmp_path / ".shard.tar.1a2b.partial").write_bytes(b"x")
    (tmp_path / ".export.9f.partial").mkdir()
    assert remove_partials(tmp_path) == 2
    assert [x.name for x in tmp_path.iterdir()] == ["keep.json"]
    assert remove_partials(tmp_path / "missing") == 0


# ---------------------------------------------------------------------------------------------
# config


class Inner(Strict):
    lr: float = Field(1e-3, gt=0)
    kind: Literal["a", "b"] = "a"


class Outer(Strict):
    name: str = "run"
    inner: Inner = Field(default_factory=Inner)
    sizes: list[int] = Field(default_factory=lambda: [1, 2])


def test_validate_names_every_field_in_one_line():
    with pytest.raises(ConfigError) as err:
        validate(Outer, {"inner": {"lr": -1, "kind": "c", "typo": 1}}, "cfg.yaml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("cfg.yaml: ")
    assert "inner.lr: Input should be greater than 0 (got -1)" in msg
    assert "inner.kind: Input should be 'a' or 'b' (got 'c')" in msg and "inner.typo: unknown field" in msg
    with pytest.raises(SamplerError, match="cfg: expected a mapping of config fields, got list"):
        validate(Outer, [1], "cfg", error=SamplerError)
    cfg = Outer()
    with pytest.raises(ValidationError, match="Input should be a valid string"):
        cfg.name = 3  # assignments are validated too


def test_overrides_parse_yaml_values_and_reach_nested_items():
    tree = {"inner": {"lr": 0.1}, "sizes": [1, 2, 3]}
    out = apply_overrides(tree, ["inner.lr=0.0003", "sizes.1=7", "name='a: b'", "inner.kind=b", "extra.deep.x=null"])
    assert out == {"inner": {"lr": 3e-4, "kind": "b"}, "sizes": [1, 7, 3], "name": "a: b",
                   "extra": {"deep": {"x": None}}}
    assert parse_override("lr=[unclosed") == ("lr", "[unclosed")  # not YAML: the literal text
    assert tree == {"inner": {"lr": 0.1}, "sizes": [1, 2, 3]}  # the input is not changed
    assert parse_override("coeffs={t2i: 1.0, lm: 0.5}") == ("coeffs", {"t2i": 1.0, "lm": 0.5})
    for bad, msg in [("lr", "expected KEY=VALUE"), ("=1", "expected KEY=VALUE"), ("sizes.9=1", "sizes has no item '9'"),
                     ("inner.lr.x=1", "inner.lr is a value, not a section")]:
        with pytest.raises(ConfigError, match=msg):
            apply_overrides(tree, [bad])


def test_load_config_from_a_file_a_dict_or_an_object(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: base\ninner: {lr: 0.5}\n")
    assert load_config(Outer, path, ["inner.kind=b"]) == Outer(name="base", inner=Inner(lr=0.5, kind="b"))
    assert load_config(Outer, {"name": "d"}).name == "d"
    assert load_config(Outer, Outer(name="o"), ["sizes=[3]"]) == Outer(name="o", sizes=[3])
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")
    assert not os.path.exists(tmp_path / "nope.yaml")
