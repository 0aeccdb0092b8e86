"""Spaces from TOML files and from the copy stored on a study."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from autosearch.search.space.presets import SPACES
from autosearch.search.space.schema import ArchSpace, RecipeSpace, SearchSpace, SpaceError

_SECTIONS = {"arch": ArchSpace, "recipe": RecipeSpace}


_TOP_KEYS = {"name", "extends", "arch", "recipe", "seeds"}


def space_from_dict(data: dict[str, Any], *, source: str) -> SearchSpace:
    """Build a space from parsed TOML; every error names `source`, the key and value."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise SpaceError(f"{source}: unknown key {unknown[0]!r} (known: {sorted(_TOP_KEYS)})")
    base_name = data.get("extends", "zigzag")
    if not isinstance(base_name, str) or base_name not in SPACES:
        raise SpaceError(f"{source}: extends={base_name!r} is not one of {', '.join(SPACES)}")
    base = SPACES[base_name]
    parts: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise SpaceError(f"{source}: [{section}] must be a table, got {table!r}")
        known = {f.name: f for f in fields(cls)}
        changes = {}
        for key, value in table.items():
            if section == "arch" and key == "fit_budget":
                raise SpaceError(
                    f"{source}: arch.fit_budget is no longer a key: widths are no longer "
                    "shrunk to the budget, they follow arch.fill (the share of the budget "
                    "a net fills); remove the key"
                )
            if key not in known:
                raise SpaceError(
                    f"{source}: unknown key {section}.{key} = {value!r} (known: {', '.join(known)})"
                )
            changes[key] = tuple(value) if isinstance(value, list) else value
            if key == "epochs" and isinstance(value, int) and not isinstance(value, bool):
                changes[key] = (value, value)
        parts[section] = replace(getattr(base, section), **changes)
    seeds = data.get("seeds", base.seeds if base_name == data.get("extends") else ())
    try:
        seeds = tuple(tuple(s) if isinstance(s, list) else s for s in seeds)
        return SearchSpace(
            name=data.get("name", source),
            arch=parts["arch"],
            recipe=parts["recipe"],
            seeds=seeds,
        )
    except (SpaceError, TypeError) as e:
        raise SpaceError(f"{source}: {e}") from None


def load_space(path: str) -> SearchSpace:
    """Read a TOML search space; see README for the keys."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such space file") from None
    except IsADirectoryError:
        raise SpaceError(f"{path}: is a folder, not a space file") from None
    except OSError as e:
        raise SpaceError(f"{path}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise SpaceError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise SpaceError(f"{path}: not valid TOML: {e}") from None
    return space_from_dict(data, source=path)


def space_from_stored(data: dict[str, Any]) -> SearchSpace:
    """Rebuild a space from `SearchSpace.to_dict()` output (as stored on a study)."""

    def tuples(table: dict[str, Any]) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}

    if "fit_budget" in data["arch"]:
        # Its trials' widths were shrunk after sampling: their parameters mean other nets.
        raise SpaceError(
            f"study space {data['name']!r} shrinks widths to the budget (arch.fit_budget), "
            "which this version no longer does; start a new study"
        )

    return SearchSpace(
        name=data["name"],
        arch=ArchSpace(**tuples(data["arch"])),
        recipe=RecipeSpace(**tuples(data["recipe"])),
        seeds=tuple(tuple(s) for s in data.get("seeds", ())),
    )


def with_epochs(space: SearchSpace, epochs: int | None) -> SearchSpace:
    """The space with its epoch range pinned to `epochs` (the CLI's --epochs)."""
    if epochs is None:
        return space
    return replace(space, recipe=replace(space.recipe, epochs=(epochs, epochs)))
