"""The training loop's retained heap: nests, restores glibc's defaults when the last block ends, and does
nothing where the C library is not glibc."""

from __future__ import annotations

import torch

from engine.training import heap


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_nested_blocks_set_the_heap_once_and_restore_it_after_the_last(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: libc)
    with heap.retained_heap():
        with heap.retained_heap():
            assert libc.calls == [("mallopt", heap.M_MMAP_MAX, 0), ("mallopt", heap.M_TRIM_THRESHOLD, heap.KEEP_ALL)]
        assert len(libc.calls) == 2
    assert libc.calls[2:] == [("mallopt", heap.M_MMAP_MAX, heap.DEFAULT_MMAP_MAX),
                              ("mallopt", heap.M_TRIM_THRESHOLD, heap.DEFAULT_TRIM_THRESHOLD), ("malloc_trim", 0)]
    assert heap._active == 0


def test_restored_after_an_error_and_usable_as_a_decorator(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: libc)

    @heap.retained_heap()
    def fails() -> None:
        raise ValueError("boom")

    for _ in range(2):
        try:
            fails()
        except ValueError:
            pass
    assert [c[0] for c in libc.calls].count("malloc_trim") == 2 and heap._active == 0


def test_no_glibc_means_no_change(monkeypatch):
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    with heap.retained_heap():
        assert heap._active == 0


def test_real_heap_keeps_tensors_correct():
    with heap.retained_heap():
        a = torch.ones(64 * 2**20 // 4)  # over glibc's 32 MB mmap threshold
        total = float(a.sum())
        del a
        b = torch.zeros(64 * 2**20 // 4)
        assert total == 64 * 2**20 // 4 and float(b.sum()) == 0.0
    assert heap._active == 0
