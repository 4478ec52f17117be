"""The in-process prompt queue."""

from __future__ import annotations

from kernel.queue import PromptQueue, QueueItem


def item(number: float, pid: str) -> QueueItem:
    return QueueItem(number=number, prompt_id=pid, prompt={})


def test_min_heap_order_and_front_numbers():
    q = PromptQueue()
    assert [q.next_number(), q.next_number(front=True), q.next_number()] == [0, -1, 2]
    for n, pid in [(3, "c"), (-1, "front"), (0.5, "b"), (0.5, "a")]:
        q.put(item(n, pid))
    assert [q.get(timeout=0).prompt_id for _ in range(4)] == ["front", "a", "b", "c"]
    assert q.get(timeout=0) is None


def test_advance_counter_only_moves_forward():
    q = PromptQueue()
    q.advance_counter(41)
    assert q.next_number() == 42
    q.advance_counter(3)
    assert q.next_number() == 43


def test_delete_clear_running_and_change_callback():
    seen: list[int] = []
    q = PromptQueue(on_change=seen.append)
    q.put(item(0, "a"))
    q.put(item(1, "b"))
    q.put(item(2, "c"))
    assert q.delete(["b", "zzz"]) == ["b"]
    running = q.get(timeout=0)
    assert running.prompt_id == "a" and q.is_running("a") and q.is_pending("c")
    assert q.clear() == ["c"]
    assert q.remaining() == 1
    q.task_done("a")
    assert q.remaining() == 0
    assert seen == [1, 2, 3, 2, 2, 1, 0]
