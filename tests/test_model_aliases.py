"""Model aliases: ``WT_MODEL_ALIASES`` and the admin's map let clients ask for models that are not installed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from app.models import AuditLog, Job, Setting
from app.services import jobs as lifecycle
from tests.helpers import AUDIO, assert_error, post_clip, reference, wer


def details(client, headers, response) -> dict:
    """GET /api/jobs/{id} of a 201 upload."""
    assert response.status_code == 201, response.get_json()
    return client.get(f"/api/jobs/{response.get_json()['job_id']}", headers=headers).get_json()


def set_aliases(client, headers, value):
    """POST /admin/settings with model_aliases."""
    return client.post("/admin/settings", headers=headers, json={"model_aliases": value})


# ------------------------------------------------------------------ the setting


def test_environment_map_is_parsed_once_into_a_dict(monkeypatch, tmp_path):
    """``WT_MODEL_ALIASES`` becomes {name: model}; spaces and empty entries do not matter."""
    from app.settings import load_settings

    monkeypatch.setenv("WT_MODEL_ALIASES", " medium=base, small = base,,large-v3=base ")
    assert load_settings({"DATA_DIR": str(tmp_path)})["MODEL_ALIASES"] == {
        "medium": "base",
        "small": "base",
        "large-v3": "base",
    }
    monkeypatch.delenv("WT_MODEL_ALIASES")
    assert load_settings({"DATA_DIR": str(tmp_path)})["MODEL_ALIASES"] == {}


@pytest.mark.parametrize(
    "value", ["medium", "medium=base=tiny", "=base", "medium=", "../x=base", "medium=base,medium=tiny.en"]
)
def test_malformed_environment_map_stops_the_start(monkeypatch, tmp_path, value):
    """A typo in WT_MODEL_ALIASES is a clear error at start, never a silently missing alias."""
    from app.settings import load_settings

    monkeypatch.setenv("WT_MODEL_ALIASES", value)
    with pytest.raises(RuntimeError, match="WT_MODEL_ALIASES"):
        load_settings({"DATA_DIR": str(tmp_path)})


# ------------------------------------------------------------------ jobs


def test_job_asking_for_an_aliased_name_runs_on_its_model_and_records_both(app, client, admin_headers):
    """medium=tiny.en: the job is accepted, runs tiny.en, and its details say medium was asked for."""
    app.config["MODEL_ALIASES"] = {"medium": "tiny.en"}
    job = details(client, admin_headers, post_clip(client, admin_headers, model="medium"))
    assert (job["model"], job["requested_model"]) == ("tiny.en", "medium")
    assert Job.get_by_id(job["job_id"]).model == "tiny.en"  # what the worker loads


def test_job_naming_an_installed_model_or_none_records_what_was_asked(app, client, admin_headers):
    """No alias involved: requested_model is the name sent, or null when the client named none."""
    named = details(client, admin_headers, post_clip(client, admin_headers, model="base"))
    assert (named["model"], named["requested_model"]) == ("base", "base")
    default = details(client, admin_headers, post_clip(client, admin_headers))
    assert (default["model"], default["requested_model"]) == ("tiny.en", None)


def test_names_neither_installed_nor_aliased_are_still_400(app, client, admin_headers):
    """An alias for medium does not open the door to small; the message names the way out."""
    app.config["MODEL_ALIASES"] = {"medium": "tiny.en"}
    body = assert_error(post_clip(client, admin_headers, model="small"), 400, "MODEL_NOT_INSTALLED")
    assert "whisper-transcriber models install small" in body["detail"] and "alias" in body["detail"]
    assert_error(post_clip(client, admin_headers, model="gpt-4o"), 400, "INVALID_MODEL")
    assert Job.select().count() == 0


def test_alias_to_a_model_that_is_not_installed_is_400_naming_the_alias(app, client, admin_headers):
    """An environment alias is not checked at start; the job request says what is wrong."""
    app.config["MODEL_ALIASES"] = {"medium": "large-v3"}
    body = assert_error(post_clip(client, admin_headers, model="medium"), 400, "MODEL_NOT_INSTALLED")
    assert "'medium' is an alias of 'large-v3'" in body["detail"]


def test_alias_wins_over_an_installed_model_of_that_name(app, client, admin_headers):
    """The admin chose it: base=tiny.en sends base jobs to tiny.en."""
    app.config["MODEL_ALIASES"] = {"base": "tiny.en"}
    job = details(client, admin_headers, post_clip(client, admin_headers, model="base"))
    assert (job["model"], job["requested_model"]) == ("tiny.en", "base")


def test_library_jobs_record_the_requested_model_too(app):
    """Media-library (sidecar) jobs go through the same resolution."""
    app.config["MODEL_ALIASES"] = {"medium": "tiny.en"}
    with app.app_context():
        job = lifecycle.create_source_job(app.config, None, AUDIO / "jfk.flac", kind="sidecar", model="medium")
    assert (job.model, job.requested_model) == ("tiny.en", "medium")


def test_openai_whisper_1_still_means_the_default_model_and_aliases_apply(
    app, client, admin_headers, stub_engine, background_worker
):
    """whisper-1 keeps its meaning; an aliased name sent through /v1 resolves like anywhere else."""
    app.config["MODEL_ALIASES"] = {"medium": "base"}
    openai = "/v1/audio/transcriptions"
    assert post_clip(client, admin_headers, path=openai, model="whisper-1").status_code == 200
    assert post_clip(client, admin_headers, path=openai, model="medium").status_code == 200
    used = [(job.model, job.requested_model) for job in Job.select().order_by(Job.created_at)]
    assert used == [("tiny.en", None), ("base", "medium")]


def test_requested_model_column_is_added_to_an_older_database(app):
    """A database from before the column gets it on open; existing jobs read null."""
    from app import models
    from app.db import open_database

    path = Path(app.config["DATA_DIR"]) / "whisper.db"
    with app.app_context():
        Job.create(id="old", original_filename="a.flac", model="tiny.en")
        models.db.close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE job DROP COLUMN requested_model")
        assert "requested_model" not in {row[1] for row in conn.execute("PRAGMA table_info(job)")}
    open_database(path)
    with sqlite3.connect(path) as conn:
        assert "requested_model" in {row[1] for row in conn.execute("PRAGMA table_info(job)")}
    assert Job.get_by_id("old").requested_model is None


# ------------------------------------------------------------------ the admin settings


def test_settings_show_the_environment_map_and_installed_models(app, client, admin_headers):
    """GET says which map is in force and where it comes from."""
    app.config["MODEL_ALIASES"] = {"medium": "base"}
    body = client.get("/admin/settings", headers=admin_headers).get_json()
    assert body["model_aliases"] == {"medium": "base"} and body["model_aliases_source"] == "environment"
    assert body["environment_model_aliases"] == {"medium": "base"}
    assert {"base", "tiny.en"} <= set(body["installed_models"]) and body["default_model"] == "tiny.en"


def test_admin_map_replaces_the_environment_map_until_reset(app, client, admin_headers):
    """A saved map (object or text) is used by new jobs at once; null puts WT_MODEL_ALIASES back."""
    app.config["MODEL_ALIASES"] = {"medium": "base"}
    saved = set_aliases(client, admin_headers, "small=tiny.en, large-v3 = base")
    assert saved.status_code == 200, saved.get_json()
    assert saved.get_json()["model_aliases"] == {"small": "tiny.en", "large-v3": "base"}
    assert saved.get_json()["model_aliases_source"] == "admin"
    assert details(client, admin_headers, post_clip(client, admin_headers, model="small"))["model"] == "tiny.en"
    assert_error(post_clip(client, admin_headers, model="medium"), 400, "MODEL_NOT_INSTALLED")  # replaced, not merged
    entry = AuditLog.search(action="admin_settings_changed").first()
    assert entry.detail["old"]["model_aliases"] == {"medium": "base"}
    assert entry.detail["new"]["model_aliases"] == {"small": "tiny.en", "large-v3": "base"}

    reset = set_aliases(client, admin_headers, None).get_json()
    assert reset["model_aliases"] == {"medium": "base"} and reset["model_aliases_source"] == "environment"
    assert details(client, admin_headers, post_clip(client, admin_headers, model="medium"))["model"] == "base"


def test_an_empty_admin_map_switches_environment_aliases_off(app, client, admin_headers):
    """{} is a map too: the admin can remove what the environment set."""
    app.config["MODEL_ALIASES"] = {"medium": "base"}
    assert set_aliases(client, admin_headers, {}).get_json()["model_aliases_source"] == "admin"
    assert_error(post_clip(client, admin_headers, model="medium"), 400, "MODEL_NOT_INSTALLED")


def test_alias_to_a_model_that_is_not_installed_is_400_on_save(app, client, admin_headers):
    """The admin learns at once; nothing is saved."""
    body = assert_error(set_aliases(client, admin_headers, {"medium": "large-v3"}), 400, "MODEL_NOT_INSTALLED")
    assert "medium=large-v3" in body["detail"] and "tiny.en" in body["detail"]
    assert client.get("/admin/settings", headers=admin_headers).get_json()["model_aliases_source"] == "environment"
    assert Setting.read("model_aliases") is None


@pytest.mark.parametrize(
    "value",
    [
        ["medium=base"],
        3,
        {"medium": 1},
        "medium",
        "medium=base=x",
        {"m/x": "base"},
        {"base": "base"},
        {"medium": "small", "small": "base"},
    ],
)
def test_malformed_admin_maps_are_422(app, client, admin_headers, value):
    """Wrong types, bad syntax, self-aliases and chains: 422, nothing saved."""
    assert_error(set_aliases(client, admin_headers, value), 422, "INVALID_FIELD")
    assert Setting.read("model_aliases") is None


def test_unknown_settings_are_422(client, admin_headers):
    """A typo in a field name is never silently dropped."""
    body = assert_error(client.post("/admin/settings", headers=admin_headers, json={"model_alias": {}}), 422)
    assert "model_alias" in body["detail"]


def test_an_unchanged_entry_whose_model_was_removed_can_be_posted_back(app, client, admin_headers, tmp_path):
    """Read-modify-write keeps working after a model is uninstalled; new entries are still checked."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("tiny.en", "base"):
        (models / f"ggml-{name}.bin").symlink_to(Path(app.config["MODELS_DIR"]) / f"ggml-{name}.bin")
    app.config["MODELS_DIR"] = str(models)
    assert set_aliases(client, admin_headers, {"medium": "base"}).status_code == 200
    (models / "ggml-base.bin").unlink()
    body = client.get("/admin/settings", headers=admin_headers).get_json()
    assert (
        client.post(
            "/admin/settings",
            headers=admin_headers,
            json={**body, "model_aliases": {**body["model_aliases"], "small": "tiny.en"}},
        ).status_code
        == 200
    )
    assert_error(set_aliases(client, admin_headers, {"medium": "base", "large": "base"}), 400, "MODEL_NOT_INSTALLED")


def test_settings_page_has_the_alias_form(client, admin_headers):
    """The admin settings page carries the field the script fills from /admin/settings."""
    page = client.get("/ui/admin/settings", headers=admin_headers).get_data(as_text=True)
    assert 'id="aliases-form"' in page and 'id="model_aliases"' in page


# ------------------------------------------------------------------ end to end


@pytest.mark.e2e
def test_aliased_name_transcribes_jfk_with_its_model(live_server):
    """medium → tiny.en, set through the admin API: the real engine transcribes JFK within 10 % WER."""
    before = live_server.get("/admin/settings").json()
    assert live_server.post("/admin/settings", json={"model_aliases": {"medium": "tiny.en"}}).status_code == 200
    try:
        job = live_server.wait(live_server.submit(AUDIO / "jfk.flac", model="medium"))
    finally:
        restored = {"model_aliases": before["model_aliases"] if before["model_aliases_source"] == "admin" else None}
        assert live_server.post("/admin/settings", json=restored).status_code == 200
    assert job["status"] == "completed", job
    assert (job["model"], job["requested_model"]) == ("tiny.en", "medium")
    assert wer(reference("jfk.flac"), job["transcript"]["text"]) <= 0.10
    assert live_server.get("/admin/settings").json()["model_aliases"] == before["model_aliases"]
