"""Schemathesis against /openapi.json: requests generated for every documented operation, and no 5xx.

Valid and invalid inputs (positive and negative generation) go to an app built as in production
(``TESTING`` off, so an unhandled error is a 500 rather than an exception in the test) with rate
limits off and an admin API key, so the requests reach the code behind authentication. The routes
that stop, restart or wipe the server are left out. ``WT_FUZZ_EXAMPLES`` sets the examples per
operation and mode (default 15: about 900 requests in 40 s; 60 gives about 3,500).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from app.services.credentials import SCOPES
from tests.conftest import build_app, login
from tests.helpers import AUDIO

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("WT_FUZZ_EXAMPLES", "15"))
SERVER_CONTROL = r"^/admin/(shutdown|restart|reset|download-all)$"


@pytest.fixture
def fuzz_app(tmp_path):
    """The app as served: errors rendered by the handler, not raised; no rate limits."""
    return build_app(tmp_path / "data", TESTING=False, RATELIMIT_ENABLED=False, ENABLE_SERVER_CONTROL=False)


def credentials(client) -> tuple[dict[str, str], dict[str, str]]:
    """Headers with an all-scopes admin API key (a logout cannot revoke it), and the ids fuzzing must spare."""
    admin = login(client)
    answer = client.post("/api/api-keys/", json={"name": "fuzz", "permissions": list(SCOPES)}, headers=admin)
    assert answer.status_code == 201, answer.get_json()
    key = answer.get_json()
    with open(AUDIO / "jfk.flac", "rb") as f:  # one real job, so job routes have something to find
        assert client.post("/api/jobs/", data={"file": (f, "jfk.flac")}, headers=admin).status_code == 201
    me = client.get("/auth/me", headers=admin).get_json()
    # Both headers: the generator would otherwise fill the one left empty with noise, which is a 401.
    headers = {"Authorization": f"Bearer {key['api_key']}", "X-API-Key": key["api_key"]}
    return headers, {"user_id": str(me["id"]), "key_id": key["key_id"]}


def explore(
    operation: Any,
    mode: GenerationMode,
    headers: dict[str, str],
    spared: dict[str, str],
    failures: list[str],
    counts: dict[int, int],
) -> None:
    """Send EXAMPLES generated requests to one operation; note every 5xx."""
    try:
        strategy = operation.as_strategy(generation_mode=mode, headers=headers)
    except Exception as exc:  # noqa: BLE001  (an operation the generator cannot describe is a finding too)
        failures.append(f"{operation.label} [{mode.value}]: no strategy ({exc})")
        return

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(case: Any) -> None:
        for name, value in spared.items():  # the fuzzing admin must not delete itself or its own key
            assume((case.path_parameters or {}).get(name) != value)
        response = case.call()
        counts[response.status_code // 100] = counts.get(response.status_code // 100, 0) + 1
        if response.status_code >= 500:
            failures.append(
                f"{operation.label} [{mode.value}] {response.status_code}: "
                f"{case.as_curl_command()}\n    {response.text[:300]}"
            )

    with contextlib.suppress(Unsatisfiable):  # nothing invalid can be generated for an operation without inputs
        run()


def test_generated_requests_never_get_a_server_error(fuzz_app):
    """Every documented operation, valid and invalid inputs: 4xx at worst, never 5xx."""
    headers, spared = credentials(fuzz_app.test_client())
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app).exclude(path_regex=SERVER_CONTROL)
    failures: list[str] = []
    counts: dict[int, int] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            explore(operation, mode, headers, spared, failures, counts)
    assert operations > 80 and sum(counts.values()) > operations * 4, (operations, counts)
    assert counts.get(2, 0) >= 30, counts  # valid requests do get through
    print(f"{operations} operations, responses by class: {counts}")
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures[:20])
