"""Model aliases: names clients ask for (``medium``) answered by an installed model (``base``).

The map comes from ``WT_MODEL_ALIASES`` (parsed once by ``app.settings``) unless an admin saved one on the
settings page; the saved map then replaces it whole, so an admin can also remove what the environment set.
An alias wins over an installed model of the same name: the admin chose it. Resolution is one step, and
an alias saved by an admin names an installed model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.errors import AppError
from app.models import Setting
from app.settings import parse_model_aliases
from workers import modelstore

KEY = "model_aliases"  # Setting: {"aliases": {...}} while an admin's map is in force, {"aliases": null} after reset


def environment(cfg: Mapping[str, Any]) -> dict[str, str]:
    """The map from ``WT_MODEL_ALIASES`` (or the config file)."""
    return dict(cfg.get("MODEL_ALIASES") or {})


def saved() -> dict[str, str] | None:
    """The admin's map, or None when the environment's is in force."""
    return (Setting.read(KEY) or {}).get("aliases")


def current(cfg: Mapping[str, Any]) -> dict[str, str]:
    """The map in force now."""
    admin = saved()
    return dict(admin) if admin is not None else environment(cfg)


def resolve(cfg: Mapping[str, Any], name: str) -> str:
    """The model that answers ``name``: its alias target, or the name itself."""
    return current(cfg).get(name, name)


def parse(value: Any) -> dict[str, str]:
    """An admin's map, a dict or ``"medium=base, small=base"``; 422 when it is neither."""
    if not isinstance(value, dict | str) or (
        isinstance(value, dict) and not all(isinstance(v, str) for v in value.values())
    ):
        raise AppError(
            422,
            "INVALID_FIELD",
            'model_aliases must be an object such as {"medium": "base"}, '
            'a string such as "medium=base, small=base", or null for the WT_MODEL_ALIASES value',
        )
    try:
        return parse_model_aliases(value, "Model aliases")
    except RuntimeError as exc:
        raise AppError(422, "INVALID_FIELD", str(exc)) from exc


def check(cfg: Mapping[str, Any], aliases: dict[str, str]) -> None:
    """Each alias names a model that is not itself an alias; new or changed ones an installed model (else 400)."""
    installed = modelstore.installed(cfg["MODELS_DIR"])
    in_force = current(cfg)  # an unchanged entry posted back stays, even if its model was removed since
    for alias, target in aliases.items():
        if alias == target:
            raise AppError(422, "INVALID_FIELD", f"Model aliases: {alias} cannot be an alias of itself")
        if target in aliases:
            raise AppError(
                422,
                "INVALID_FIELD",
                f"Model aliases: {alias}={target} points to another alias; "
                f"name an installed model ({', '.join(installed) or 'none'})",
            )
        if target not in installed and in_force.get(alias) != target:
            raise AppError(
                400,
                "MODEL_NOT_INSTALLED",
                f"Model aliases: {alias}={target} points to a model that is not installed. Installed: "
                f"{', '.join(installed) or 'none'}. Install it with: {modelstore.install_hint(target)}",
            )


def save(cfg: Mapping[str, Any], value: Any) -> None:
    """Store the admin's map; ``None``, or the environment's own map, puts the environment's back in force."""
    aliases = None if value is None else parse(value)
    if aliases == environment(cfg):  # what GET showed, posted back: nothing to override
        aliases = None
    if aliases is not None:
        check(cfg, aliases)
    Setting.write(KEY, {"aliases": aliases})
