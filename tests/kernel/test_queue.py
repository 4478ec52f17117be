"""The in-process prompt queue."""

from __future__ import annotations

import gc
import math

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


def test_pending_items_come_back_exactly():
    """Pending items wait as bytes; what a client sent comes back value for value and type for
    type: NaN and infinities, -0.0, int vs float, big ints, non-ASCII text, nested lists."""
    q = PromptQueue()
    prompt = {
        "1": {"class_type": "X", "inputs": {"f": 1.0, "i": 1, "nan": float("nan"), "inf": float("-inf")}},
        "2": {"class_type": "Y", "inputs": {"link": ["1", 0], "z": -0.0, "big": 2**63, "s": "é ✓ 🙂"}},
        "3": {"class_type": "Z", "inputs": {"nested": [[1, [2.5, None, True]], {"k": False}]}},
    }
    extra = {"client_id": "c", "extra_pnginfo": {"workflow": {"nodes": [{"id": 1, "pos": [0.5, 2]}]}}}
    q.put(QueueItem(number=3.5, prompt_id="p", prompt=prompt, extra_data=extra, outputs_to_execute=["3"]))
    q.put(QueueItem(number=2, prompt_id="q", prompt={}))

    _, pending = q.snapshot()
    listed = next(i for i in pending if i.prompt_id == "p")
    taken = [q.get(timeout=0), q.get(timeout=0)]
    assert [i.prompt_id for i in taken] == ["q", "p"]
    assert type(taken[0].number) is int and type(taken[1].number) is float
    for item in (listed, taken[1]):
        inputs = item.prompt["1"]["inputs"]
        assert type(inputs["f"]) is float and type(inputs["i"]) is int
        assert math.isnan(inputs["nan"]) and inputs["inf"] == float("-inf")
        assert math.copysign(1.0, item.prompt["2"]["inputs"]["z"]) == -1.0
        assert item.prompt["2"]["inputs"]["big"] == 2**63
        assert item.prompt["2"]["inputs"]["s"] == "é ✓ 🙂"
        assert item.prompt["3"] == prompt["3"] and item.extra_data == extra
        assert item.outputs_to_execute == ["3"]


def test_pending_item_that_bytes_cannot_carry_is_kept_as_is():
    q = PromptQueue()
    marker = object()
    q.put(QueueItem(number=0, prompt_id="a", prompt={"1": {"inputs": {"x": marker, "huge": 2**80}}}))
    assert q.get(timeout=0).prompt["1"]["inputs"]["x"] is marker


def test_a_deep_queue_holds_no_containers_for_the_garbage_collector():
    """A burst of thousands of accepted prompts must not give every garbage collection
    hundreds of thousands of dicts and lists to walk (it cost the accept path ~25%)."""
    q = PromptQueue()

    def prompt(seed: int) -> dict[str, object]:
        nodes: dict[str, object] = {"0": {"class_type": "A", "inputs": {"seed": seed}}}
        for i in range(1, 50):
            nodes[str(i)] = {"class_type": "B", "inputs": {"image": [str(i - 1), 0], "w": 1.5}}
        return nodes

    gc.collect()
    before = len(gc.get_objects())
    for n in range(1000):
        q.put(QueueItem(number=n, prompt_id=f"id{n}", prompt=prompt(n), extra_data={"client_id": "c"}))
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert grown < 1000 * 2, grown  # the heap's own list; each 50-node prompt as dicts is ~150
    assert q.remaining() == 1000 and q.get(timeout=0).prompt == prompt(0)


def test_listing_a_deep_queue_leaves_the_garbage_collector_as_it_was():
    q = PromptQueue()
    for n in range(50):
        q.put(QueueItem(number=n, prompt_id=f"id{n}", prompt={"1": {"inputs": {"x": [n]}}}))
    assert gc.isenabled()
    assert [i.prompt["1"]["inputs"]["x"] for i in q.snapshot()[1]] == [[n] for n in range(50)]
    assert gc.isenabled()
    gc.disable()
    try:
        q.snapshot()
        assert not gc.isenabled()  # a caller that paused it keeps it paused
    finally:
        gc.enable()
