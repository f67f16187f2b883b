"""harness/lock.py: one bench process per results folder; a released lock names nobody."""

import json
import os

import pytest

from harness.lock import LOCK_NAME, LockedError, results_lock


def test_a_second_holder_is_refused_with_the_first_ones_command_and_released_locks_are_empty(tmp_path):
    with results_lock(tmp_path, "bench run --methods sft") as path:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "bench run --methods sft"
        # flock locks belong to open file descriptions, so a second open in this process contends like another
        # process would
        with pytest.raises(LockedError, match=rf"pid {os.getpid()} .*bench run --methods sft") as e:
            with results_lock(tmp_path, "bench leaderboard"):
                pass
        assert e.value.exit_code == 75
        assert json.loads(path.read_text())["command"] == "bench run --methods sft"  # the refusal wrote nothing
    assert (tmp_path / LOCK_NAME).read_text() == ""
    with results_lock(tmp_path, "bench leaderboard") as path:  # free again
        assert json.loads(path.read_text())["command"] == "bench leaderboard"
