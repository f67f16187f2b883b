"""The content-keyed stage cache: stable keys and all-or-nothing stage outputs."""

from __future__ import annotations

import json
import os

import pytest

from harness.cache import DONE, StageCache, cache_root, model_cache_dir, stable_hash
from harness.files import publish_dir, write_json_atomic, write_text_atomic


def test_stable_hash_ignores_dict_key_order():
    a = {"model": {"source": "x", "drop": [10, 16]}, "seed": 0, "budget": "tiny"}
    b = {"budget": "tiny", "seed": 0, "model": {"drop": [10, 16], "source": "x"}}
    assert stable_hash(a) == stable_hash(b)


@pytest.mark.parametrize("changed", [
    {"model": {"source": "y", "drop": [10, 16]}, "seed": 0, "budget": "tiny"},
    {"model": {"source": "x", "drop": [10, 15]}, "seed": 0, "budget": "tiny"},
    {"model": {"source": "x", "drop": [16, 10]}, "seed": 0, "budget": "tiny"},  # list order matters
    {"model": {"source": "x", "drop": [10, 16]}, "seed": 1, "budget": "tiny"},
    {"model": {"source": "x", "drop": [10, 16]}, "seed": 0, "budget": "tiny", "extra": None},
])
def test_stable_hash_changes_with_content(changed):
    base = {"model": {"source": "x", "drop": [10, 16]}, "seed": 0, "budget": "tiny"}
    assert stable_hash(changed) != stable_hash(base)


def test_stable_hash_length_and_known_value():
    h = stable_hash({"a": 1})
    assert len(h) == 16 and int(h, 16) >= 0
    assert len(stable_hash({"a": 1}, length=8)) == 8
    assert stable_hash({"a": 1}, length=8) == h[:8]
    # pinned: a change in serialisation would silently invalidate every cache on disk
    assert h == "015abd7f5cc57a2d"


def test_build_success_makes_output_visible(tmp_path):
    cache = StageCache(tmp_path)
    assert not cache.has("signals", "k1")
    with cache.build("signals", "k1") as folder:
        assert not cache.has("signals", "k1")
        assert not cache.path("signals", "k1").exists()
        (folder / "out.json").write_text('{"x": 1}')
    final = cache.path("signals", "k1")
    assert cache.has("signals", "k1")
    assert final == tmp_path / "signals" / "k1"
    assert (final / "out.json").read_text() == '{"x": 1}'
    assert (final / DONE).exists()
    assert sorted(p.name for p in (tmp_path / "signals").iterdir()) == ["k1"]  # no temporary folder left


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_build_failure_leaves_nothing(tmp_path, exc):
    cache = StageCache(tmp_path)
    with pytest.raises(type(exc)):
        with cache.build("train", "k2") as folder:
            (folder / "half-written.bin").write_bytes(b"\0" * 10)
            raise exc
    assert not cache.has("train", "k2")
    assert not cache.path("train", "k2").exists()
    assert list((tmp_path / "train").iterdir()) == []


def test_work_in_progress_survives_a_failed_build_and_goes_with_a_finished_one(tmp_path):
    cache = StageCache(tmp_path)
    journal = cache.partial("signals", "k3") / "generation.jsonl"
    journal.parent.mkdir(parents=True)
    journal.write_text('{"batch": 0}\n')
    with pytest.raises(RuntimeError):
        with cache.build("signals", "k3"):
            raise RuntimeError("killed")
    assert journal.read_text() == '{"batch": 0}\n'  # the resume point is kept for the next attempt
    with cache.build("signals", "k3") as folder:
        (folder / "out.json").write_text("{}")
    assert cache.has("signals", "k3") and not cache.partial("signals", "k3").exists()


def test_build_when_another_run_finished_first_keeps_theirs(tmp_path):
    cache = StageCache(tmp_path)
    with cache.build("eval", "k3") as folder:
        (folder / "who").write_text("first")
    with cache.build("eval", "k3") as folder:
        (folder / "who").write_text("second")
    assert (cache.path("eval", "k3") / "who").read_text() == "first"
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["k3"]


def test_publish_dir_when_another_process_renamed_first_keeps_theirs(tmp_path):
    # The race CI hit with several test workers: both built the folder, the second rename found it non-empty.
    final, ours = tmp_path / "model", tmp_path / "model.tmp2"
    final.mkdir()
    (final / "who").write_text("first")
    ours.mkdir()
    (ours / "who").write_text("second")
    publish_dir(ours, final)
    assert (final / "who").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_publish_dir_moves_a_new_folder_and_raises_other_errors(tmp_path):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "w").write_text("x")
    publish_dir(tmp_path / "tmp", tmp_path / "final")
    assert (tmp_path / "final" / "w").read_text() == "x" and not (tmp_path / "tmp").exists()
    with pytest.raises(FileNotFoundError):
        publish_dir(tmp_path / "absent", tmp_path / "other")
    (tmp_path / "file").write_text("")
    (tmp_path / "tmp2").mkdir()
    with pytest.raises(OSError):  # a file in the way is not "someone else published the same folder"
        publish_dir(tmp_path / "tmp2", tmp_path / "file")
    assert (tmp_path / "tmp2").is_dir()


def test_folder_without_done_marker_is_not_a_hit(tmp_path):
    cache = StageCache(tmp_path)
    cache.path("eval", "k4").mkdir(parents=True)
    assert not cache.has("eval", "k4")


def test_atomic_writers(tmp_path):
    path = tmp_path / "sub" / "record.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"b": 1, "a": [1, 2]}
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    write_text_atomic(path, "replaced")
    assert path.read_text() == "replaced"
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]


def test_cache_dir_flag_moves_the_model_cache_unless_the_variable_names_one(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_MODEL_CACHE", raising=False)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "from-env"))
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"
    assert model_cache_dir() == tmp_path / "flag" / "models"  # not under $BENCH_CACHE_DIR or ~/.cache/bench
    assert os.environ["BENCH_MODEL_CACHE"] == str(tmp_path / "flag" / "models")  # for the processes it starts

    monkeypatch.delenv("BENCH_MODEL_CACHE")
    assert cache_root(None) == tmp_path / "from-env" and model_cache_dir() == tmp_path / "from-env" / "models"

    monkeypatch.setenv("BENCH_MODEL_CACHE", str(tmp_path / "models-elsewhere"))
    cache_root(tmp_path / "flag")
    assert model_cache_dir() == tmp_path / "models-elsewhere"
