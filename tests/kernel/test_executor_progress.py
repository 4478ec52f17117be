"""Progress messages, their isolation between clients, and binary preview frames."""

from __future__ import annotations

import asyncio
import json
import struct

from kernel.progress import ProgressBar, get_executing_context, set_progress, throw_if_interrupted
from tests.kernel.exec_helpers import collect, connect, of_type, start, submit


def steps_prompt(value: int, steps: int = 3, preview: bool = False) -> dict:
    return {
        "s": {
            "class_type": "ExecSteps",
            "inputs": {"steps": steps, "delay": 0.0, "value": value, "preview": preview},
        },
        "out": {"class_type": "ExecShow", "inputs": {"value": ["s", 0]}},
    }


async def test_progress_messages(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt_id = await submit(server, steps_prompt(1, steps=3), client_id)
    messages = [m for m in await collect(ws, prompt_id) if isinstance(m, dict)]
    progress = of_type(messages, "progress")
    assert progress[0] == {"value": 1, "max": 3, "prompt_id": prompt_id, "node": "s"}
    assert progress[-1] == {"value": 3, "max": 3, "prompt_id": prompt_id, "node": "s"}
    # progress_state is coalesced: its values for the node only grow, and the state flushed
    # before the next node's output shows the last progress and the node finished.
    values = [d["nodes"]["s"]["value"] for d in of_type(messages, "progress_state") if "s" in d["nodes"]]
    assert values == sorted(values)
    types = [m["type"] for m in messages]
    before_output = [m for m in messages[: types.index("executed")] if m["type"] == "progress_state"][-1]
    assert before_output["data"]["nodes"]["s"] | {"prompt_id": None} == {
        "value": 3,
        "max": 3,
        "state": "finished",
        "node_id": "s",
        "prompt_id": None,
        "display_node_id": "s",
        "parent_node_id": None,
        "real_node_id": "s",
    }


async def test_progress_is_isolated_between_clients(comfy_server):
    server = await start(comfy_server)
    alice, alice_ws = await connect(server)
    bob, bob_ws = await connect(server)
    first = await submit(server, steps_prompt(1), alice)
    second = await submit(server, steps_prompt(2), bob)
    alice_frames, bob_frames = await asyncio.gather(collect(alice_ws, first), collect(bob_ws, second))
    for frames, mine, theirs in ((alice_frames, first, second), (bob_frames, second, first)):
        text = [f for f in frames if isinstance(f, dict) and f["type"] != "status"]
        assert of_type(text, "progress"), "each client sees its own progress"
        for message in text:
            assert message["data"].get("prompt_id") in (mine, None)
            assert theirs not in json.dumps(message)
        for state in of_type(text, "progress_state"):
            # The registry is per prompt: nothing of the other prompt leaks in.
            assert all(n["prompt_id"] == mine for n in state["nodes"].values())


async def test_preview_frames_type_1_and_type_4(comfy_server):
    server = await start(comfy_server)
    plain, plain_ws = await connect(server, flags={"supports_preview_metadata": False})
    rich, rich_ws = await connect(server, flags={"supports_preview_metadata": True})
    p1 = await submit(server, steps_prompt(1, steps=2, preview=True), plain)
    p2 = await submit(server, steps_prompt(2, steps=2, preview=True), rich)
    plain_frames, rich_frames = await asyncio.gather(collect(plain_ws, p1), collect(rich_ws, p2))

    binary = [f for f in plain_frames if isinstance(f, bytes)]
    assert len(binary) == 2
    event, fmt = struct.unpack(">II", binary[0][:8])
    assert (event, fmt) == (1, 1) and binary[0][8:10] == b"\xff\xd8"  # JPEG
    event, fmt = struct.unpack(">II", binary[1][:8])
    assert (event, fmt) == (1, 2) and binary[1][8:16] == b"\x89PNG\r\n\x1a\n"

    binary = [f for f in rich_frames if isinstance(f, bytes)]
    assert len(binary) == 2
    event, length = struct.unpack(">II", binary[1][:8])
    assert event == 4
    meta = json.loads(binary[1][8 : 8 + length])
    assert meta == {
        "node_id": "s",
        "prompt_id": p2,
        "display_node_id": "s",
        "parent_node_id": None,
        "real_node_id": "s",
        "image_type": "image/png",
    }
    assert binary[1][8 + length : 8 + length + 8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(rich_frames_meta(binary[0]))["image_type"] == "image/jpeg"


def rich_frames_meta(frame: bytes) -> bytes:
    _, length = struct.unpack(">II", frame[:8])
    return frame[8 : 8 + length]


def test_progress_api_outside_a_node_is_inert():
    assert get_executing_context() is None
    bar = ProgressBar(5)
    bar.update(2)
    assert bar.current == 2
    set_progress(1, 2)
    throw_if_interrupted()


def test_previews_are_fitted_to_the_preview_size_both_ways():
    """Like the reference's send_image (ImageOps.contain): large previews shrink, small ones grow,
    the aspect kept; a tuple's own size wins and None leaves the image as it is."""
    import io

    from PIL import Image

    from kernel.executor.progress import encode_preview

    def size_of(data: bytes) -> tuple[int, int]:
        return Image.open(io.BytesIO(data)).size

    small = Image.new("RGB", (64, 48), (10, 20, 30))
    large = Image.new("RGB", (2048, 1024), (10, 20, 30))
    assert size_of(encode_preview(small, 512)[0]) == (512, 384)
    assert size_of(encode_preview(large, 512)[0]) == (512, 256)
    assert size_of(encode_preview(("PNG", small, 128), 512)[0]) == (128, 96)
    data, kind = encode_preview(("PNG", small, None), 512)
    assert kind == "PNG" and size_of(data) == (64, 48)
