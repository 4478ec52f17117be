"""Shaping prompts into the reference's job objects (api-behaviour §4).

Pure functions over plain dicts: no kernel, no database, so they are cheap to test and to call
once per finished prompt (the list form of a finished job is computed when it is recorded).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PENDING = "pending"
IN_PROGRESS = "in_progress"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)

_MODEL_3D_EXTS = (".obj", ".fbx", ".gltf", ".glb", ".usdz")
_TEXT_FILE_EXTS = (".txt", ".md", ".json")
_PREVIEWABLE_MEDIA = frozenset({"images", "video", "audio", "3d", "text"})
_TEXT_PREVIEW_LIMIT = 1024
_TERMINAL_MESSAGES = ("execution_success", "execution_error", "execution_interrupted")


def prune(job: dict[str, Any]) -> dict[str, Any]:
    """The reference drops keys whose value is None rather than sending nulls."""
    return {k: v for k, v in job.items() if v is not None}


def workflow_id(extra_data: dict[str, Any]) -> str | None:
    try:
        value = extra_data["extra_pnginfo"]["workflow"]["id"]
    except (KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def status_from_history(status: dict[str, Any] | None) -> str:
    if not status:
        return COMPLETED
    if status.get("status_str") == "success":
        return COMPLETED
    if status.get("status_str") == "error":
        if any(_message_name(m) == "execution_interrupted" for m in status.get("messages") or ()):
            return CANCELLED
        return FAILED
    return COMPLETED


def _message_name(message: Any) -> str | None:
    if isinstance(message, (list, tuple)) and len(message) == 2 and isinstance(message[0], str):
        return message[0]
    return None


def message_times(status: dict[str, Any] | None) -> tuple[int | None, int | None, dict[str, Any] | None]:
    """(execution start ms, execution end ms, execution_error data) from the status messages."""
    start = end = None
    error = None
    for message in (status or {}).get("messages") or ():
        name = _message_name(message)
        data = message[1] if name else None
        if not isinstance(data, dict):
            continue
        if name == "execution_start":
            start = data.get("timestamp")
        elif name in _TERMINAL_MESSAGES:
            end = data.get("timestamp")
            if name == "execution_error":
                error = data
    return start, end, error


def _ext(name: Any) -> str:
    if not isinstance(name, str):
        return ""
    dot = name.rfind(".")
    return name[dot:].lower() if dot >= 0 else ""


def _iter_items(outputs: dict[str, Any]) -> Iterable[tuple[str, str, Any]]:
    for node_id, node_output in outputs.items():
        if not isinstance(node_output, dict):
            continue
        for media, items in node_output.items():
            if media == "animated" or not isinstance(items, list):
                continue
            for item in items:
                yield node_id, media, item


def _as_file_item(item: Any) -> dict[str, Any] | None:
    if isinstance(item, dict):
        return item
    if isinstance(item, str) and _ext(item) in _MODEL_3D_EXTS:
        return {"filename": item, "type": "output", "subfolder": "", "mediaType": "3d"}
    return None


def _previewable(media: str, item: dict[str, Any]) -> bool:
    fmt = item.get("format")
    if media in _PREVIEWABLE_MEDIA:
        return True
    if isinstance(fmt, str) and fmt.startswith(("video/", "audio/")):
        return True
    return _ext(item.get("filename")) in _MODEL_3D_EXTS + _TEXT_FILE_EXTS


def _is_text(media: str, item: dict[str, Any]) -> bool:
    return media == "text" or _ext(item.get("filename")) in _TEXT_FILE_EXTS


def summarize_outputs(outputs: dict[str, Any] | None) -> tuple[int, int, dict[str, Any] | None]:
    """(outputs_count, previewable_outputs_count, preview_output) by the reference's priority."""
    count = previewable = 0
    first_output = first_other = first_text_file = first_raw_text = None
    for node_id, media, raw in _iter_items(outputs or {}):
        item = _as_file_item(raw)
        if item is None:
            if first_raw_text is None and media == "text" and isinstance(raw, str):
                first_raw_text = _text_preview(node_id, raw)
            continue
        count += 1
        if not _previewable(media, item):
            continue
        previewable += 1
        chosen = {**item, "nodeId": node_id}
        chosen.setdefault("mediaType", media)
        if _is_text(media, item):
            first_text_file = first_text_file or chosen
        elif item.get("type") == "output":
            first_output = first_output or chosen
        else:
            first_other = first_other or chosen
    return count, previewable, first_output or first_other or first_text_file or first_raw_text


def _text_preview(node_id: str, text: str) -> dict[str, Any]:
    preview: dict[str, Any] = {"content": text[:_TEXT_PREVIEW_LIMIT]}
    if len(text) > _TEXT_PREVIEW_LIMIT:
        preview["truncated"] = True
    preview.update(nodeId=node_id, mediaType="text")
    return preview


def normalize_outputs(outputs: dict[str, Any] | None) -> dict[str, Any]:
    """Detail-form outputs: 3D model file names become file objects like every other output."""
    normalized: dict[str, Any] = {}
    for node_id, node_output in (outputs or {}).items():
        if not isinstance(node_output, dict):
            normalized[node_id] = node_output
            continue
        shaped: dict[str, Any] = {}
        for media, items in node_output.items():
            if media != "animated" and isinstance(items, list):
                items = [
                    _as_file_item(i) if isinstance(i, str) and _ext(i) in _MODEL_3D_EXTS else i for i in items
                ]
            shaped[media] = items
        normalized[node_id] = shaped
    return normalized


def queue_job(item_list: list[Any], status: str) -> dict[str, Any]:
    """List form of a pending or running prompt (``item_list`` is the 5-element wire form)."""
    number, prompt_id, _prompt, extra_data, _outputs = item_list
    extra_data = extra_data if isinstance(extra_data, dict) else {}
    return prune(
        {
            "id": prompt_id,
            "status": status,
            "priority": number,
            "create_time": extra_data.get("create_time"),
            "outputs_count": 0,
            "previewable_outputs_count": 0,
            "workflow_id": workflow_id(extra_data),
        }
    )


def history_job(entry: dict[str, Any]) -> dict[str, Any]:
    """List form of a finished prompt from its history entry."""
    number, prompt_id, _prompt, extra_data, _outputs = entry["prompt"]
    extra_data = extra_data if isinstance(extra_data, dict) else {}
    status = entry.get("status")
    start, end, error = message_times(status)
    count, previewable, preview = summarize_outputs(entry.get("outputs"))
    return prune(
        {
            "id": prompt_id,
            "status": status_from_history(status),
            "priority": number,
            "create_time": extra_data.get("create_time"),
            "execution_start_time": start,
            "execution_end_time": end,
            "execution_error": error,
            "outputs_count": count,
            "previewable_outputs_count": previewable,
            "preview_output": preview,
            "workflow_id": workflow_id(extra_data),
        }
    )


def workflow_of(item_list: list[Any]) -> dict[str, Any]:
    return {"prompt": item_list[2], "extra_data": item_list[3]}


def history_job_detail(entry: dict[str, Any]) -> dict[str, Any]:
    job = history_job(entry)
    job["outputs"] = normalize_outputs(entry.get("outputs"))
    if entry.get("status") is not None:
        job["execution_status"] = entry["status"]
    job["workflow"] = workflow_of(entry["prompt"])
    return job


def queue_job_detail(item_list: list[Any], status: str) -> dict[str, Any]:
    job = queue_job(item_list, status)
    job["workflow"] = workflow_of(item_list)
    return job


def duration(start: Any, end: Any) -> int | float:
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):
        return end - start
    return 0
