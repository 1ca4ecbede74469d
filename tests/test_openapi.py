"""The generated OpenAPI document, and Swagger UI and ReDoc served from local assets only."""

from __future__ import annotations

import re

from flask import Blueprint

from tests.helpers import assert_error

_URL_ATTR = re.compile(r'(?:src|href|spec-url|data-spec-url)="([^"]*)"')


def spec(client) -> dict:
    """GET /openapi.json."""
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.is_json
    return response.get_json()


def test_every_route_and_method_is_in_the_document(app, client):
    """Walks the URL map: nothing is listed by hand, so every dialect's routes are covered."""
    paths = spec(client)["paths"]
    rules = [r for r in app.url_map.iter_rules() if r.endpoint != "static"]
    assert len(rules) > 30
    for rule in rules:
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        assert path in paths, path
        assert {m.lower() for m in rule.methods - {"HEAD", "OPTIONS"}} <= set(paths[path]), path
    assert not any("<" in path or "static" in path for path in paths)


def test_operations_take_summary_tag_and_parameters_from_the_code(client):
    """The docstring's first line, the blueprint as tag, and typed path parameters."""
    from app.api import job_routes

    document = spec(client)
    assert document["openapi"].startswith("3.0") and document["info"]["title"]
    operation = document["paths"]["/api/jobs/{job_id}"]["get"]
    assert operation["summary"] == job_routes.get_job.__doc__.splitlines()[0]
    assert operation["tags"] == ["jobs"]
    job_id, wait = operation["parameters"]
    assert job_id == {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    assert (wait["name"], wait["in"], wait["schema"]["maximum"]) == ("wait", "query", 60)
    assert operation["responses"]["default"] == {"$ref": "#/components/responses/Error"}
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    assert {"jobs", "chunked_uploads", "search", "metrics"} <= {tag["name"] for tag in document["tags"]}


def test_a_route_added_to_the_app_appears_with_its_docstring(app, client):
    """New routes need no change here: an int converter becomes an integer parameter."""
    extra = Blueprint("extra", __name__)

    @extra.route("/extra/<int:number>", methods=["GET", "PUT"])
    def view(number: int):
        """Say hello.

        More words.
        """
        return "hello"

    app.register_blueprint(extra)
    item = spec(client)["paths"]["/extra/{number}"]
    assert set(item) == {"get", "put"}
    assert item["put"]["summary"] == "Say hello." and item["put"]["description"] == "More words."
    assert item["get"]["parameters"][0]["schema"] == {"type": "integer"} and item["get"]["tags"] == ["extra"]


def test_full_api_routes_describe_their_bodies_and_public_routes_need_no_credentials(client):
    """Chunked uploads and search carry request bodies; health and the docs are open."""
    paths = spec(client)["paths"]
    initialize = paths["/api/chunked-uploads/initialize"]["post"]
    schema = initialize["requestBody"]["content"]["application/json"]["schema"]
    assert {"filename", "file_size", "chunk_size"} <= set(schema["required"])
    assert "201" in initialize["responses"]
    chunk = paths["/api/chunked-uploads/{session_id}/chunks/{chunk_number}"]["post"]
    assert "application/octet-stream" in chunk["requestBody"]["content"]
    assert "query" in paths["/api/search/"]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"]
    assert paths["/health"]["get"]["security"] == [] and paths["/openapi.json"]["get"]["security"] == []
    assert "security" not in paths["/api/jobs/"]["post"]  # the document-wide bearer or API key applies


def local_urls(html: str) -> list[str]:
    """Every URL a page refers to; fails on anything that is not a path on this server."""
    urls = _URL_ATTR.findall(html)
    assert urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
    assert "http://" not in html and "https://" not in html
    return urls


def test_swagger_ui_and_redoc_load_only_local_assets(client):
    """Both pages and their assets come from this server; a CSP forbids anything else."""
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200 and response.content_type.startswith("text/html")
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "http" not in csp
        for url in local_urls(response.get_data(as_text=True)):
            assert client.get(url).status_code == 200, url
    init = client.get("/docs/assets/swagger-init.js").get_data(as_text=True)
    assert "validatorUrl: null" in init  # otherwise Swagger UI asks a public validator about the spec
    redoc = client.get("/docs/assets/redoc/redoc.standalone.js").get_data(as_text=True)
    assert "cdn.redoc.ly" not in redoc and "/docs/assets/redoc/logo-mini.svg" in redoc


def test_only_known_asset_files_are_served(client):
    """Anything else under the asset folders is a 404 with the standard body."""
    for url in (
        "/docs/assets/swagger/index.html",
        "/docs/assets/swagger/..%2F__init__.py",
        "/docs/assets/redoc/index.html",
        "/docs/assets/redoc/../../openapi.json",
    ):
        assert_error(client.get(url), 404)


def test_bodies_and_parameters_the_fuzzer_needs_are_described_exactly(app, client):
    """Required bodies and enums: DELETE /admin/files, browse, export formats, chunk sizes from the settings."""
    from app.services.exports import FORMATS
    from app.services.files import BROWSABLE, LISTED

    paths = spec(client)["paths"]
    delete = paths["/admin/files"]["delete"]["requestBody"]
    schema = delete["content"]["application/json"]["schema"]
    assert delete["required"] and set(schema["required"]) == {"folder", "filename"}
    assert schema["properties"]["folder"]["enum"] == list(LISTED)
    folder, path = paths["/admin/browse"]["get"]["parameters"]
    assert (folder["name"], folder["required"], folder["schema"]["enum"]) == ("folder", True, list(BROWSABLE))
    assert (path["name"], path["required"]) == ("path", False)
    fmt = next(p for p in paths["/api/export/download/{job_id}/{fmt}"]["get"]["parameters"] if p["name"] == "fmt")
    assert fmt["in"] == "path" and fmt["schema"]["enum"] == list(FORMATS)
    legacy = paths["/jobs/{job_id}/download"]["get"]["parameters"]
    assert next(p for p in legacy if p["name"] == "format")["schema"]["enum"] == list(FORMATS)
    voxis = paths["/api/export/{job_id}"]["get"]["parameters"]
    voxis = {p["name"]: p["schema"]["enum"] for p in voxis if p["in"] == "query"}
    assert voxis == {"format": ["wav", "mp3", "flac"], "quality": ["low", "medium", "high"]}
    sizes = paths["/api/chunked-uploads/initialize"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    chunk_size = sizes["properties"]["chunk_size"]
    assert (chunk_size["minimum"], chunk_size["maximum"]) == (1, app.config["MAX_CHUNK_SIZE"])
    assert sizes["properties"]["file_size"]["maximum"] == app.config["MAX_CONTENT_LENGTH"]


def test_websocket_routes_are_marked_and_answer_101(client):
    """x-websocket and a 101 response, so tools (and readers) do not take them for plain GETs."""
    paths = spec(client)["paths"]
    for path in ("/ws/logs", "/ws/logs/system", "/ws/logs/{job_id}"):
        operation = paths[path]["get"]
        assert operation["x-websocket"] is True and operation["description"].startswith("WebSocket")
        assert "101" in operation["responses"] and "200" not in operation["responses"]
    assert "x-websocket" not in paths["/api/jobs/"]["get"]


def test_post_api_jobs_without_the_trailing_slash_creates_the_job(client, admin_headers):
    """No 308 to /api/jobs/ (a client would send the upload twice); both spellings are documented."""
    from tests.helpers import AUDIO

    with open(AUDIO / "jfk.flac", "rb") as f:
        response = client.post("/api/jobs", data={"file": (f, "jfk.flac")}, headers=admin_headers)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["status"] == "queued"
    paths = spec(client)["paths"]
    assert "post" in paths["/api/jobs"] and "post" in paths["/api/jobs/"]
    assert "get" in paths["/api/jobs"]  # the VOXIS job list keeps the slash-less GET
