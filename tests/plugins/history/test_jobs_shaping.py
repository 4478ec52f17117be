"""outputs_count, previewable_outputs_count and preview_output selection (api-behaviour §4.3)."""

from __future__ import annotations

from plugins.history import jobs


def test_output_files_are_preferred_over_temp_previews():
    outputs = {
        "1": {"images": [{"filename": "t.png", "subfolder": "", "type": "temp"}]},
        "2": {"images": [{"filename": "o.png", "subfolder": "", "type": "output"}]},
    }
    count, previewable, preview = jobs.summarize_outputs(outputs)
    assert (count, previewable) == (2, 2)
    assert preview == {
        "filename": "o.png",
        "subfolder": "",
        "type": "output",
        "nodeId": "2",
        "mediaType": "images",
    }


def test_temp_preview_when_no_output_file():
    outputs = {"5": {"images": [{"filename": "t.png", "subfolder": "", "type": "temp"}]}}
    assert jobs.summarize_outputs(outputs)[2]["filename"] == "t.png"


def test_animated_key_and_non_list_values_are_skipped():
    outputs = {"1": {"animated": [True], "images": [{"filename": "a.png", "type": "output"}], "misc": "x"}}
    count, previewable, _ = jobs.summarize_outputs(outputs)
    assert (count, previewable) == (1, 1)


def test_3d_strings_become_file_items():
    outputs = {"9": {"result": ["mesh.glb", "notes"]}}
    count, previewable, preview = jobs.summarize_outputs(outputs)
    assert (count, previewable) == (1, 1)
    assert preview == {
        "filename": "mesh.glb",
        "type": "output",
        "subfolder": "",
        "mediaType": "3d",
        "nodeId": "9",
    }
    assert jobs.normalize_outputs(outputs)["9"]["result"][0]["mediaType"] == "3d"


def test_non_previewable_dicts_count_but_do_not_preview():
    outputs = {"1": {"latents": [{"filename": "x.latent", "type": "output"}]}}
    assert jobs.summarize_outputs(outputs) == (1, 0, None)


def test_video_format_is_previewable_and_keeps_its_media_type():
    outputs = {
        "1": {"gifs": [{"filename": "v.mp4", "type": "output", "format": "video/h264-mp4", "mediaType": "x"}]}
    }
    _, previewable, preview = jobs.summarize_outputs(outputs)
    assert previewable == 1
    assert preview["mediaType"] == "x" and preview["nodeId"] == "1"


def test_text_file_beats_raw_text_but_loses_to_media():
    text_file = {"filename": "n.txt", "type": "output"}
    outputs = {"1": {"text": ["hello"]}, "2": {"files": [text_file]}}
    assert jobs.summarize_outputs(outputs)[2]["filename"] == "n.txt"
    outputs["3"] = {"audio": [{"filename": "s.flac", "type": "temp"}]}
    assert jobs.summarize_outputs(outputs)[2]["filename"] == "s.flac"


def test_raw_text_preview_is_truncated():
    long = "x" * 2000
    count, previewable, preview = jobs.summarize_outputs({"4": {"text": [long]}})
    assert (count, previewable) == (0, 0)
    assert preview == {"content": "x" * 1024, "truncated": True, "nodeId": "4", "mediaType": "text"}
    assert "truncated" not in jobs.summarize_outputs({"4": {"text": ["short"]}})[2]


def test_status_mapping():
    assert jobs.status_from_history(None) == "completed"
    assert jobs.status_from_history({"status_str": "success", "messages": []}) == "completed"
    assert (
        jobs.status_from_history({"status_str": "error", "messages": [["execution_error", {}]]}) == "failed"
    )
    interrupted = {"status_str": "error", "messages": [["execution_interrupted", {}]]}
    assert jobs.status_from_history(interrupted) == "cancelled"


def test_none_values_are_pruned_not_null():
    job = jobs.queue_job([1, "id", {}, {}, []], jobs.PENDING)
    assert "create_time" not in job and "workflow_id" not in job
