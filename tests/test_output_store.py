"""The output folder: generated names, content types, no path traversal, retention and budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from opea_media.errors import NotFound
from opea_media.media.store import OutputStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _store(tmp_path: Path, clock: Clock, *, max_bytes: int = 10_000) -> OutputStore:
    store = OutputStore(tmp_path / "out", retention=60, max_bytes=max_bytes, clock=clock)
    store.prepare()
    return store


def _age(store: OutputStore, name: str, mtime: float) -> None:
    import os

    os.utime(store.folder / name, (mtime, mtime))


def test_names_are_generated_unguessable_and_keep_the_suffix(tmp_path: Path) -> None:
    store = _store(tmp_path, Clock())
    first = store.write_bytes(b"a", prefix="req/../1:x", suffix="-generated.mp4")
    second = store.write_bytes(b"b", prefix="req/../1:x", suffix="-generated.mp4")
    assert first != second and first.endswith("-generated.mp4") and first.startswith("req-1-x-")
    assert "/" not in first and len(first.split("-")[-2]) == 32  # 128 random bits
    found = store.find(first)
    assert found.path.read_bytes() == b"a" and found.content_type == "video/mp4"
    assert store.find(store.write_bytes(b"c", prefix="p", suffix=".webp")).content_type == "image/webp"
    with pytest.raises(ValueError):
        store.new_name("p", "/../x.png")


@pytest.mark.parametrize("name", ["../etc/passwd", "..", ".hidden", "a/b.png", "", "x" * 300, "a\x00.png"])
def test_names_outside_the_folder_or_hidden_are_not_found(tmp_path: Path, name: str) -> None:
    store = _store(tmp_path, Clock())
    (tmp_path / "secret.png").write_bytes(b"s")
    (store.folder / ".hidden").write_bytes(b"h")
    with pytest.raises(NotFound):
        store.find(name)


def test_expired_files_are_not_served_and_are_pruned(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    old = store.write_bytes(b"old", prefix="p", suffix=".png")
    _age(store, old, clock.now - 61)
    with pytest.raises(NotFound):
        store.find(old)
    fresh = store.write_bytes(b"new", prefix="p", suffix=".png")  # each write prunes
    assert sorted(p.name for p in store.folder.iterdir()) == [fresh]


def test_past_the_budget_the_oldest_go_first_and_the_newest_stays(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock, max_bytes=2500)
    names = []
    for k in range(3):
        names.append(store.write_bytes(b"x" * 1000, prefix=f"f{k}", suffix=".png"))
        _age(store, names[-1], clock.now - 30 + k)
    # The third write went over the budget: the oldest file went, at once.
    assert sorted(p.name for p in store.folder.iterdir()) == sorted(names[1:])
    assert store.prune() == 0
    big = store.write_bytes(b"y" * 5000, prefix="big", suffix=".png")  # alone over the budget: kept
    assert [p.name for p in store.folder.iterdir()] == [big]
