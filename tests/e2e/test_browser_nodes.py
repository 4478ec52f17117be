"""The official frontend builds every node type we publish, and runs a workflow built in the page.

The frontend turns each ``/object_info`` entry into a LiteGraph node: widgets for the values a
user types or picks, sockets for what is wired, V3 kinds (autogrow inputs, dynamic combos, match
types, colour / bounding-box / image-compare widgets) through its own handlers. A malformed entry
shows as an exception, a missing widget or socket, or a console error; all are collected per node
name and reported together. The server runs with every installed plugin (``--plugins all``) plus
the browser tests' own pack.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any
from urllib.parse import urlencode

from PIL import Image

from tests.e2e.harness import ARTIFACTS, booted_ui, start_with_every_plugin

# Input types the frontend draws as a widget on the node (the value lives in the node, a socket
# can still be wired to it); every other type is a socket only.
VALUE_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Types the frontend has a dedicated widget for (its colour picker, crop and box editors, image
# comparison); a dynamic combo is drawn as a combo widget whose choice adds sub-inputs.
CUSTOM_WIDGET_TYPES = {"COLOR", "BOUNDING_BOX", "BOUNDING_BOXES", "IMAGECOMPARE", "COMFY_DYNAMICCOMBO_V3"}
AUTOGROW = "COMFY_AUTOGROW_V3"
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
# A match-type output takes the type of what is wired in; unwired, the frontend shows it as "*".
MATCHTYPE = "COMFY_MATCHTYPE_V3"

# Create every registered type on an emptied canvas and describe what the frontend built.
CREATE_ALL = """(names) => {
    app.graph.clear();
    const built = {};
    for (const name of names) {
        try {
            if (!(name in LiteGraph.registered_node_types)) { built[name] = {error: 'not registered'}; continue; }
            const node = LiteGraph.createNode(name);
            if (!node) { built[name] = {error: 'createNode returned nothing'}; continue; }
            app.graph.add(node);
            built[name] = {
                widgets: (node.widgets || []).map(w => w.name),
                inputs: (node.inputs || []).map(i => i.name),
                outputs: (node.outputs || []).map(o => [o.name, String(o.type)]),
            };
        } catch (error) {
            built[name] = {error: String(error && error.stack || error)};
        }
    }
    return {built, count: app.graph.nodes.length};
}"""

# For each dynamic combo: pick every choice in turn, as a user does, and record the node's
# widgets and sockets after each.
SWITCH_CHOICES = """([name, input, keys]) => {
    app.graph.clear();
    const node = LiteGraph.createNode(name);
    app.graph.add(node);
    const widget = node.widgets.find(w => w.name === input);
    const seen = {choices: widget.options.values, after: {}};
    for (const key of keys) {
        widget.value = key;
        widget.callback?.(key, app.canvas, node);
        seen.after[key] = {widgets: node.widgets.map(w => w.name), inputs: node.inputs.map(i => i.name)};
    }
    return seen;
}"""


def _is_widget(spec: list[Any]) -> bool:
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in VALUE_TYPES or kind in CUSTOM_WIDGET_TYPES


def _inputs(section_map: dict[str, Any]) -> dict[str, list[Any]]:
    return {**(section_map.get("required") or {}), **(section_map.get("optional") or {})}


def _first_autogrow_name(name: str, spec: list[Any]) -> str:
    template = spec[1]["template"]
    return f"{name}.{template['names'][0]}" if template.get("names") else f"{name}.{template['prefix']}0"


def _problems(info: dict[str, Any], built: dict[str, Any]) -> list[str]:
    """How the node the frontend built differs from what its /object_info entry says."""
    if "error" in built:
        return [built["error"]]
    widgets, sockets, problems = built["widgets"], built["inputs"], []
    visible = _inputs(info["input"])
    expected_widgets = 0
    for name, spec in visible.items():
        kind = spec[0]
        if kind == AUTOGROW:
            first = _first_autogrow_name(name, spec)
            if first not in sockets:
                problems.append(f"autogrow {name}: no socket {first} in {sockets}")
        elif _is_widget(spec):
            expected_widgets += 1
            if name not in widgets:
                problems.append(f"no widget for {name} ({kind if isinstance(kind, str) else 'choice list'})")
        elif name not in sockets:
            problems.append(f"no socket for {name} ({kind})")
        elif name in widgets:
            problems.append(f"{name} ({kind}) is a widget, not only a socket")
    if len(widgets) < expected_widgets:
        problems.append(f"{len(widgets)} widgets for {expected_widgets} widget inputs")
    for name in set(info["input"].get("hidden") or {}) - set(visible):
        if name in widgets or name in sockets:
            problems.append(f"hidden input {name} is shown")
    want_outputs = [
        [label, "COMBO" if isinstance(kind, list) else "*" if kind == MATCHTYPE else kind]
        for label, kind in zip(info["output_name"], info["output"], strict=True)
    ]
    if built["outputs"] != want_outputs:
        problems.append(f"outputs {built['outputs']} != {want_outputs}")
    return problems


def _choice_problems(name: str, spec: list[Any], seen: dict[str, Any]) -> list[str]:
    """After picking each choice of dynamic combo ``name``, exactly that choice's sub-inputs show."""
    options = spec[1]["options"]
    problems = []
    if seen["choices"] != [option["key"] for option in options]:
        problems.append(f"{name}: choices {seen['choices']}")
    for option in options:
        subs = _inputs(option["inputs"])
        want_widgets = {f"{name}.{sub}" for sub, sub_spec in subs.items() if _is_widget(sub_spec)}
        want_sockets = {f"{name}.{sub}" for sub, sub_spec in subs.items() if not _is_widget(sub_spec)}
        after = seen["after"][option["key"]]
        got_widgets = {w for w in after["widgets"] if w.startswith(name + ".")}
        got_sockets = {i for i in after["inputs"] if i.startswith(name + ".")}
        if got_widgets != want_widgets or not want_sockets <= got_sockets <= want_sockets | want_widgets:
            problems.append(
                f"{name}={option['key']!r}: widgets {sorted(got_widgets)}, sockets {sorted(got_sockets)}"
            )
    return problems


async def test_every_published_node_type_builds_in_the_frontend(comfy_server, chromium_path, monkeypatch):
    server = await start_with_every_plugin(comfy_server, monkeypatch)
    # An earlier output for LoadImageOutput, whose combo lists the output folder (a remote list).
    output = server.kernel.settings.output_path
    output.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (0, 90, 200)).save(output / "earlier.png")
    status, object_info = await server.json("GET", "/object_info")
    assert status == 200
    async with booted_ui(server.url, chromium_path) as ui:
        boot_errors = ui.page_errors + ui.console_errors
        result = await ui.page.evaluate(CREATE_ALL, list(object_info))
        # The listed name selects the file and its preview loads (from the output folder).
        await ui.page.wait_for_function(
            """() => {
                const node = app.graph.nodes.find(n => n.type === 'LoadImageOutput');
                return node.widgets[0].value === 'earlier.png [output]' && node.imgs?.[0]?.naturalWidth === 12;
            }""",
            timeout=15_000,
        )
        dynamic = {
            (name, input_name): spec
            for name, info in object_info.items()
            for input_name, spec in _inputs(info["input"]).items()
            if spec[0] == DYNAMIC_COMBO
        }
        switched = {
            key: await ui.page.evaluate(SWITCH_CHOICES, [*key, [o["key"] for o in spec[1]["options"]]])
            for key, spec in dynamic.items()
        }
        page_errors, console_errors = list(ui.page_errors), list(ui.console_errors)

    assert boot_errors == [], "\n".join(boot_errors)
    failures = {
        name: problems
        for name, info in object_info.items()
        if (problems := _problems(info, result["built"][name]))
    }
    for (name, input_name), spec in dynamic.items():
        if problems := _choice_problems(input_name, spec, switched[name, input_name]):
            failures.setdefault(name, []).extend(problems)
    assert failures == {}, "\n".join(f"{name}: {'; '.join(p)}" for name, p in sorted(failures.items()))
    assert result["count"] == len(object_info)
    # The run covers the V3 kinds, not just plain widgets: guard against an empty sample.
    kinds = {str(spec[0]) for info in object_info.values() for spec in _inputs(info["input"]).values()}
    assert {AUTOGROW, DYNAMIC_COMBO, MATCHTYPE, "COLOR", "BOUNDING_BOX", "IMAGECOMPARE"} <= kinds
    assert len(dynamic) >= 3
    assert page_errors == []
    assert console_errors == [], "\n".join(console_errors)


# Build the workflow with the frontend's graph API, as a user does on the canvas: two coloured
# images side by side, mirrored, blurred and halved (a dynamic-combo choice), then saved; a text
# and a computed number (an autogrow socket) shown by Preview as Text.
BUILD_WORKFLOW = """async () => {
    app.graph.clear();
    let placed = 0;
    const add = (type, values = {}) => {
        const node = LiteGraph.createNode(type);
        // Laid out in a grid so that the screenshot shows every node.
        node.pos = [20 + (placed % 5) * 300, 20 + Math.floor(placed / 5) * 330];
        placed += 1;
        app.graph.add(node);
        for (const [name, value] of Object.entries(values)) {
            const widget = node.widgets.find(w => w.name === name);
            if (!widget) throw new Error(`${type} has no widget ${name}`);
            widget.value = value;
            widget.callback?.(value, app.canvas, node);
        }
        return node;
    };
    const red = add('EmptyImage', {width: 20, height: 24, color: 0xff0000});
    const blue = add('EmptyImage', {width: 20, height: 24, color: 0x0000ff});
    const stitch = add('ImageStitch', {direction: 'right', match_image_size: true});
    const flip = add('ImageFlip', {flip_method: 'y-axis: horizontally'});
    const blur = add('ImageBlur', {blur_radius: 1, sigma: 1.0});
    const resize = add('ResizeImageMaskNode', {resize_type: 'scale by multiplier'});
    resize.widgets.find(w => w.name === 'resize_type.multiplier').value = 0.5;
    const save = add('SaveImage', {filename_prefix: 'fe_nodes'});
    const concat = add('StringConcatenate', {string_a: 'héllo', string_b: 'wörld', delimiter: ' + '});
    const textPreview = add('PreviewAny');
    const number = add('PrimitiveInt', {value: 21});
    const math = add('ComfyMathExpression', {expression: 'a * 2'});
    const numberPreview = add('PreviewAny');
    red.connect(0, stitch, 'image1');
    blue.connect(0, stitch, 'image2');
    stitch.connect(0, flip, 'image');
    flip.connect(0, blur, 'image');
    blur.connect(0, resize, 'input');
    resize.connect(0, save, 'images');
    concat.connect(0, textPreview, 'source');
    number.connect(0, math, 'values.a');
    math.connect(1, numberPreview, 'source');
    app.canvas.ds.scale = 0.8;
    app.canvas.ds.offset[0] = 80;
    app.canvas.ds.offset[1] = 80;
    app.graph.setDirtyCanvas(true, true);
    const {output} = await app.graphToPrompt();
    return {output, ids: {save: String(save.id), text: String(textPreview.id), number: String(numberPreview.id)}};
}"""


async def test_a_workflow_built_in_the_page_runs(comfy_server, chromium_path, monkeypatch):
    server = await start_with_every_plugin(comfy_server, monkeypatch)
    async with booted_ui(server.url, chromium_path) as ui:
        page = ui.page
        built = await page.evaluate(BUILD_WORKFLOW)
        async with page.expect_response(lambda r: r.url.endswith("/api/prompt")) as posted:
            await page.click("[data-testid=queue-button]")
        response = await posted.value
        answer = await response.json()
        assert response.status == 200, answer
        prompt_id = answer["prompt_id"]
        for _ in range(600):  # the history entry appears when the prompt has finished, well or not
            status, history = await server.json("GET", f"/history/{prompt_id}")
            if status == 200 and prompt_id in history:
                break
            await asyncio.sleep(0.05)
        assert prompt_id in history, "the prompt did not finish within 30 s"
        entry = history[prompt_id]
        # The frontend shows the executed text in the Preview as Text nodes.
        await page.wait_for_function(
            """(id) => app.graph.getNodeById(Number(id)).widgets
                .find(w => w.name === 'preview_text')?.value === 'héllo + wörld'""",
            arg=built["ids"]["text"],
            timeout=15_000,
        )
        # ... and the saved image on the Save Image node (fetched from /view).
        await page.wait_for_function(
            "(id) => app.graph.getNodeById(Number(id)).imgs?.[0]?.naturalWidth === 20",
            arg=built["ids"]["save"],
            timeout=15_000,
        )
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "browser_nodes_workflow.png"))
        page_errors, console_errors = list(ui.page_errors), list(ui.console_errors)

    # What the frontend's graphToPrompt sent: V3 inputs under their dotted names.
    by_class = {node["class_type"]: node["inputs"] for node in built["output"].values()}
    assert by_class["ResizeImageMaskNode"]["resize_type"] == "scale by multiplier"
    assert by_class["ResizeImageMaskNode"]["resize_type.multiplier"] == 0.5
    assert by_class["ComfyMathExpression"]["values.a"][1] == 0
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = entry["outputs"]
    assert outputs[built["ids"]["text"]]["text"] == ["héllo + wörld"]
    assert outputs[built["ids"]["number"]]["text"] == ["42"]
    (saved,) = outputs[built["ids"]["save"]]["images"]
    async with server.get("/view?" + urlencode(saved)) as resp:
        assert resp.status == 200
        image = Image.open(io.BytesIO(await resp.read())).convert("RGB")
    # [red | blue] mirrored is [blue | red]; halved to 20x12; the blur only touches the seam
    # (and, in float32, may leave 254 where 255 was: saving truncates).
    assert image.size == (20, 12)
    for (x, y), colour in (((2, 6), (0, 0, 255)), ((17, 6), (255, 0, 0))):
        assert all(abs(a - b) <= 1 for a, b in zip(image.getpixel((x, y)), colour, strict=True)), (x, y)
    assert page_errors == []
    assert console_errors == [], "\n".join(console_errors)
