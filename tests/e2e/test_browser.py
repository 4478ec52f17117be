"""The official web UI in a real headless Chromium against our server with every plugin.

Chromium, the network fence and the console watch are ``tests/e2e/harness.py``'s. The
screenshots land in ``tests/e2e/artifacts/`` (gitignored) for a human to look at.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from urllib.parse import urlsplit

from PIL import Image
from playwright.async_api import Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

import tests.e2e.uipack as uipack
from kernel.plugins import discover_entry_points
from tests.e2e.harness import ARTIFACTS, CHROMIUM_ARGS, OFFLINE_SETTINGS, Browser, start_with_every_plugin

API_WORKFLOW = {
    "1": {
        "class_type": "E2ESolidColor",
        "inputs": {"width": 64, "height": 48, "red": 200, "green": 30, "blue": 90, "steps": 6},
        "_meta": {"title": "Solid"},
    },
    "2": {
        "class_type": "E2ESaveImage",
        "inputs": {"images": ["1", 0], "filename_prefix": "e2e"},
        "_meta": {"title": "Save"},
    },
}


async def test_web_ui_end_to_end(comfy_server, chromium_path, tmp_path, monkeypatch):
    # Every installed plugin, as `comfykernel run` would load them, plus the test pack.
    server = await start_with_every_plugin(comfy_server, monkeypatch)
    enabled = set(server.kernel.plugin_names)
    assert {"frontend_ext", "history", "userdata", "models", "uipack"} <= enabled, enabled
    assert set(discover_entry_points()) - enabled == {
        name for name, rec in server.kernel.plugin_records.items() if rec.status in ("failed", "blocked")
    }
    workflow_file = tmp_path / "solid_api.json"
    workflow_file.write_text(json.dumps(API_WORKFLOW))

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            ui = Browser(page, server.url)
            await ui.block_the_world()
            await ui.boot()

            # --- the node library lists our nodes ---
            await page.click("[data-testid=node-library-tab-button]")
            await page.get_by_text("e2e", exact=True).first.click()
            await page.get_by_text("E2E Solid Color").first.wait_for(timeout=15_000)
            await page.get_by_text("E2E Save Image").first.wait_for(timeout=15_000)
            await page.click("[data-testid=node-library-tab-button]")  # close the sidebar again

            # --- an API-format workflow is loaded through the UI's file input ---
            await page.set_input_files("#comfy-file-input", str(workflow_file))
            await page.wait_for_function(
                "() => app.graph.nodes.map(n => n.type).sort().join() === 'E2ESaveImage,E2ESolidColor'",
                timeout=15_000,
            )

            # --- run it twice with the Run button: one job runs while the other waits ---
            prompt_ids: list[str] = []
            for _ in range(2):
                async with page.expect_response(lambda r: r.url.endswith("/api/prompt")) as posted:
                    await page.click("[data-testid=queue-button]")
                response = await posted.value
                assert response.status == 200
                prompt_ids.append((await response.json())["prompt_id"])
            first_id, prompt_id = prompt_ids

            # --- progress shows (tab title), running and pending jobs show (/api/jobs, queue button) ---
            titles: list[str] = []
            queue_labels: set[str] = set()
            job_states: set[tuple[str, str]] = set()
            for _ in range(600):
                titles.append(await page.title())
                queue_labels.add(await page.inner_text("[data-testid=queue-overlay-toggle]"))
                _, active = await server.json("GET", "/api/jobs?status=in_progress,pending")
                job_states |= {(job["id"], job["status"]) for job in active["jobs"]}
                _, last = await server.json("GET", f"/api/jobs/{prompt_id}")
                if last.get("status") == "completed":
                    break
                await asyncio.sleep(0.05)
            assert last["status"] == "completed", last
            node_progress = [t for t in titles if re.search(r"\[(1[0-9]|[2-9][0-9])%\] E2ESolidColor", t)]
            assert node_progress, f"no progress in the title; titles seen: {sorted(set(titles))}"
            # Playwright delivers WebSocket frame events asynchronously: give them a moment.
            for _ in range(100):
                if "progress" in ui.ws_types and "executed" in ui.ws_types:
                    break
                await asyncio.sleep(0.05)
            assert "progress" in ui.ws_types and "executed" in ui.ws_types, ui.ws_types
            assert (first_id, "in_progress") in job_states
            assert (prompt_id, "pending") in job_states
            assert any(re.search(r"\b2 active\b", label) for label in queue_labels), queue_labels
            image = page.locator('img[src*="/view?filename=e2e_"]').first

            # --- the output image appears, served by /view ---
            await image.wait_for(state="visible", timeout=30_000)
            src = await image.get_attribute("src")
            assert src is not None
            natural_width = await image.evaluate("img => img.complete ? img.naturalWidth : 0")
            assert natural_width == 64
            view = urlsplit(src)
            async with server.get(view.path + "?" + view.query) as resp:
                assert resp.status == 200
                assert resp.content_type == "image/png"
                png = Image.open(io.BytesIO(await resp.read())).convert("RGB")
            assert png.size == (64, 48)
            assert png.getpixel((10, 10)) == (200, 30, 90)

            # --- the job appears in the queue/history panel (fed by /api/jobs) ---
            await page.click("[data-testid=queue-overlay-toggle]")
            filename = dict(p.split("=", 1) for p in view.query.split("&"))["filename"]
            await page.get_by_text(filename).first.wait_for(timeout=15_000)
            status, job = await server.json("GET", f"/api/jobs/{prompt_id}")
            assert status == 200 and job["status"] == "completed"

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "browser.png"))

            # --- a workflow saved in the UI is listed under userdata after a reload ---
            await page.click("[data-testid=queue-overlay-toggle]")
            await page.mouse.click(700, 700)  # focus the canvas so the keybinding reaches it
            await page.keyboard.press("Control+s")
            name_box = page.get_by_role("dialog").locator("input").first
            await name_box.wait_for(timeout=15_000)
            await name_box.fill("e2e_saved")
            async with page.expect_response(
                lambda r: r.request.method == "POST" and "/api/userdata/workflows%2Fe2e_saved.json" in r.url
            ) as saved:
                await name_box.press("Enter")
            assert (await saved.value).status == 200
            await page.reload()
            await page.wait_for_function("() => window.app && window.app.graph", timeout=60_000)
            await page.click("[data-testid=workflows-tab-button]")
            await page.get_by_text("e2e_saved").first.wait_for(timeout=15_000)
            await page.screenshot(path=str(ARTIFACTS / "browser_saved.png"))
            status, listing = await server.json("GET", "/userdata?dir=workflows")
            assert status == 200 and "e2e_saved.json" in listing

            page_errors, console_errors = list(ui.page_errors), list(ui.console_errors)
            # The network fence holds: a request to the outside world is aborted, not sent.
            outcome = await page.evaluate(
                "() => fetch('https://example.com/e2e-probe').then(() => 'sent', () => 'aborted')"
            )
            assert outcome == "aborted"
            assert "https://example.com/e2e-probe" in ui.blocked
        finally:
            await browser.close()

    assert page_errors == []
    assert console_errors == [], "\n".join(console_errors)


async def test_manager_dialog_opens(chromium_path, tmp_path):
    """``--enable-manager``: the UI shows its extensions button and the Manager dialog opens on it.

    The frontend decides from ``--enable-manager`` in ``/system_stats`` argv and the
    ``extension.manager`` feature flags, so the server is a real ``python -m comfykernel`` process.
    """
    from tests.compat.helpers import LauncherServer

    server = LauncherServer(
        ["--enable-manager", "--base-directory", str(tmp_path / "comfy")], tmp_path / "server.log"
    )
    manager_answers: list[tuple[str, int]] = []
    try:
        await server.wait_ready()
        status, _ = await server.json("POST", "/settings", json=OFFLINE_SETTINGS)
        assert status == 200
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 900})

                def record(response) -> None:  # noqa: ANN001 - playwright's Response
                    if "/v2/" in response.url:
                        manager_answers.append((urlsplit(response.url).path, response.status))

                page.on("response", record)
                ui = Browser(page, server.url)
                await ui.block_the_world()
                await ui.boot()
                # The top bar's button is there only when the frontend sees the manager enabled.
                await page.get_by_role("button", name="Extensions", exact=True).click(timeout=30_000)
                dialog = page.locator(".manager-dialog")
                await dialog.wait_for(state="visible", timeout=30_000)
                await dialog.get_by_text("Nodes Manager").wait_for(timeout=15_000)
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "manager_dialog.png"))
                page_errors = list(ui.page_errors)
            finally:
                await browser.close()
    finally:
        await server.stop()
    assert page_errors == []
    # The dialog (and the UI's manager store) talked to the Manager's own routes, which answered.
    assert any(status == 200 for _, status in manager_answers), manager_answers


async def _search_and_add(page: Page, query: str, result: str) -> dict[str, object]:
    """On an emptied canvas, double-click, type ``query`` in the node search box, add the first
    hit and return the node the frontend built (type, title, widget/input/output names)."""
    await page.evaluate("() => app.graph.clear()")
    search = page.get_by_placeholder("Add a node...")
    # Right after the previous search box closed the canvas may still swallow a double-click:
    # double-click again until the box is there.
    for _ in range(10):
        await page.mouse.dblclick(700, 450)
        try:
            await search.wait_for(timeout=1_500)
            break
        except PlaywrightTimeoutError:
            continue
    await search.wait_for(timeout=5_000)
    await search.type(query, delay=20)
    await page.get_by_text(result, exact=True).first.wait_for(timeout=15_000)
    await search.press("Enter")
    await search.wait_for(state="hidden", timeout=15_000)
    await page.wait_for_function("() => app.graph.nodes.length === 1", timeout=15_000)
    return await page.evaluate(
        """() => app.graph.nodes.map(n => ({
            type: n.type,
            title: n.title,
            widgets: (n.widgets || []).map(w => w.name),
            inputs: (n.inputs || []).map(i => i.name),
            outputs: (n.outputs || []).map(o => o.name),
        }))[0]"""
    )


async def test_node_search_adds_core_nodes(comfy_server, chromium_path):
    """The frontend's node search finds core nodes by class name and puts them on the canvas,
    built from our /object_info: the text node's widgets, the math node's autogrow sockets."""
    server = await comfy_server(plugins=None)
    status, _ = await server.json("POST", "/settings", json=OFFLINE_SETTINGS)
    assert status == 200
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            ui = Browser(page, server.url)
            await ui.block_the_world()
            await ui.boot()
            concat = await _search_and_add(page, "StringConcatenate", "Concatenate Text")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "node_search.png"))
            math_node = await _search_and_add(page, "ComfyMathExpression", "Math Expression")
            page_errors, console_errors = list(ui.page_errors), list(ui.console_errors)
        finally:
            await browser.close()

    assert concat == {
        "type": "StringConcatenate",
        "title": "Concatenate Text",
        "widgets": ["string_a", "string_b", "delimiter"],
        "inputs": concat["inputs"],  # widget inputs vary by frontend version; not compared
        "outputs": ["STRING"],
    }
    assert math_node["type"] == "ComfyMathExpression" and math_node["title"] == "Math Expression"
    # Autogrow: the required slot "a" plus one spare, named as a prompt names them.
    assert math_node["inputs"][:2] == ["values.a", "values.b"]
    assert math_node["outputs"] == ["FLOAT", "INT", "BOOL"]
    assert page_errors == []
    assert console_errors == [], "\n".join(console_errors)


async def test_login_then_run_a_workflow_with_auth(comfy_server, chromium_path, tmp_path):
    """``--auth password``: the browser lands on our login page, signs in, and the official
    frontend runs a workflow unchanged; its API calls and its WebSocket carry the session cookie."""
    from tests.plugins.auth.helpers import PASSWORD, add_user, bearer, new_token

    add_user(tmp_path, "alice")
    token = new_token(tmp_path, "alice")
    server = await comfy_server(
        plugins=["frontend_ext", "history", "userdata", "models", "auth", ("uipack", uipack)],
        base_directory=tmp_path,
        extra={"auth": "password"},
    )
    # Without credentials nothing answers; alice's own settings keep the UI offline.
    assert (await server.json("GET", "/api/queue"))[0] == 401
    status, _ = await server.json("POST", "/settings", json=OFFLINE_SETTINGS, headers=bearer(token))
    assert status == 200
    workflow_file = tmp_path / "solid_api.json"
    workflow_file.write_text(json.dumps(API_WORKFLOW))

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            ui = Browser(page, server.url)
            await ui.block_the_world()
            await page.goto(server.url + "/")
            assert urlsplit(page.url).path == "/auth/login"
            await page.fill("#username", "alice")
            await page.fill("#password", "not the password")
            await page.click("button[type=submit]")
            await page.get_by_text("Wrong user name or password").wait_for(timeout=15_000)
            await page.fill("#password", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_function("() => window.app && window.app.graph", timeout=60_000)
            await page.wait_for_load_state("networkidle", timeout=30_000)
            assert urlsplit(page.url).path == "/"
            session = {c["name"]: c for c in await page.context.cookies()}["comfykernel_session"]
            assert session["httpOnly"] and session["sameSite"] == "Strict"

            await page.set_input_files("#comfy-file-input", str(workflow_file))
            await page.wait_for_function(
                "() => app.graph.nodes.map(n => n.type).sort().join() === 'E2ESaveImage,E2ESolidColor'",
                timeout=15_000,
            )
            async with page.expect_response(lambda r: r.url.endswith("/api/prompt")) as posted:
                await page.click("[data-testid=queue-button]")
            response = await posted.value
            assert response.status == 200
            prompt_id = (await response.json())["prompt_id"]
            image = page.locator('img[src*="/view?filename=e2e_"]').first
            await image.wait_for(state="visible", timeout=30_000)
            assert await image.evaluate("img => img.complete ? img.naturalWidth : 0") == 64
            for _ in range(100):
                if "executed" in ui.ws_types:
                    break
                await asyncio.sleep(0.05)
            assert "executed" in ui.ws_types, ui.ws_types
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "browser_auth.png"))
            page_errors, console_errors = list(ui.page_errors), list(ui.console_errors)

            # Our "Sign out" menu command ends the session and returns to the login page.
            await page.evaluate("() => app.extensionManager.command.execute('comfykernel.auth.signOut')")
            await page.wait_for_url("**/auth/login", timeout=15_000)
            assert await page.evaluate("() => fetch('/api/queue').then(r => r.status)") == 401
        finally:
            await browser.close()

    # The prompt is alice's: her token sees it, anonymous callers see nothing.
    status, job = await server.json("GET", f"/api/jobs/{prompt_id}", headers=bearer(token))
    assert status == 200 and job["status"] == "completed"
    assert (await server.json("GET", f"/api/jobs/{prompt_id}"))[0] == 401
    assert page_errors == []
    # The deliberately wrong password answered 401, which the browser logs; nothing else may fail.
    wrong_password = [e for e in console_errors if "status of 401" in e and e.endswith("/auth/login)")]
    assert len(wrong_password) == 1, console_errors
    console_errors.remove(wrong_password[0])
    assert console_errors == [], "\n".join(console_errors)
