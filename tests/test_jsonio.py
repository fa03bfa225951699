"""Atomic writes: a failed write leaves what was there and no temporary behind; JSON read errors
name the file."""

import pytest

from tracetune.jsonio import InputError, atomic_dir, read_json, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half").write_text("half-written")
            raise RuntimeError("crash mid-write")
    assert [p.name for p in out.iterdir()] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left behind
    with atomic_dir(out) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # readable by others, as other artifacts


def test_read_json_names_the_file(tmp_path):
    with pytest.raises(InputError, match=r"missing.json: file not found$"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"a": 1,\n}')
    with pytest.raises(InputError, match=r"bad.json: not valid JSON \(.* at line 2\)$"):
        read_json(tmp_path / "bad.json")
    write_json(tmp_path / "good.json", {"a": [1]})
    assert read_json(tmp_path / "good.json") == {"a": [1]}
