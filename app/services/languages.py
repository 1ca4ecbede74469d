"""Whisper's languages: the codes the engines accept and their English names, read from whisper.cpp itself.

Both engines know the same table (whisper.cpp and faster-whisper carry OpenAI's list). It is taken from
the whisper.cpp library the appliance already depends on, not typed in here, so a new release that adds a
language is accepted without a change. faster-whisper is an optional extra and slow to import: not used here.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

EXAMPLES = ("en", "de", "fr", "es", "ja")  # named in error messages
_REGION = re.compile(r"^([a-z]{2,3})[-_][a-z0-9]{2,8}$")  # "en-US", "pt_br": whisper has no regional variants


@functools.cache
def table() -> dict[str, str]:
    """Code → lower-case English name of every language whisper knows; empty when whisper.cpp is missing."""
    try:
        import _pywhispercpp as pw
    except ImportError:
        log.warning("whisper.cpp (pywhispercpp) is not importable: language codes are checked by shape only")
        return {}
    codes = [pw.whisper_lang_str(i) for i in range(pw.whisper_lang_max_id() + 1)]
    names = _full_names(len(codes))
    return {code: (names[i] if names else code) for i, code in enumerate(codes)}


def _full_names(count: int) -> list[str] | None:
    """whisper.cpp's ``whisper_lang_str_full``, which pywhispercpp does not wrap, from the library it loaded."""
    try:
        rows = [line.split(None, 5) for line in Path("/proc/self/maps").read_text().splitlines()]
        path = next(row[5] for row in rows if len(row) == 6 and Path(row[5]).name.startswith("libwhisper"))
        function = ctypes.CDLL(path).whisper_lang_str_full  # dlopen of a loaded library returns the same handle
    except (OSError, StopIteration, AttributeError):
        return None  # not Linux, or an older whisper.cpp: codes only
    function.restype, function.argtypes = ctypes.c_char_p, [ctypes.c_int]
    names = [function(i) for i in range(count)]
    return [name.decode().lower() for name in names] if all(names) else None


def name_of(code: str) -> str:
    """The lower-case English name of a language code ("de" → "german"); the code itself when unknown."""
    return table().get(code, code)


@functools.cache
def _by_name() -> dict[str, str]:
    return {name: code for code, name in table().items()}


def code_for(language: str) -> str | None:
    """Whisper's code for a code, an English name (any case) or a code with a region ("en-US"); else None."""
    value = " ".join(language.strip().lower().split())
    codes = table()
    if not codes:  # whisper.cpp missing: the old check by shape, so a web-only install still takes jobs
        return value if 2 <= len(value) <= 8 and value.replace("-", "").isalpha() else None
    if value in codes:
        return value
    if value in _by_name():
        return _by_name()[value]
    region = _REGION.match(value)
    return region.group(1) if region and region.group(1) in codes else None
