"""Atomic writes: readers see the old file or the new one, never a half-written or private one."""

import os
import stat

import pytest

from scoresde._utils import atomic_path, file_digest


def test_atomic_path_replaces_in_one_step_with_the_usual_permissions(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    before = file_digest(target)
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and file_digest(target) != before
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
