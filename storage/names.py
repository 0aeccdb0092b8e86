"""The one rule for study names: valid on every storage backend and as a folder name.

A study name becomes a row in the storage (Optuna's `study_name` column holds 512
characters on PostgreSQL and MySQL, any length on SQLite), a folder under the log
folder and part of a checkpoint folder name. One rule, checked by every command before
anything is opened or written, keeps all three working and every file inside its folder.
"""

from __future__ import annotations

import re

MAX_STUDY_NAME = 128  # characters; well inside every backend's column and a path component
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class StudyNameError(ValueError):
    """A study name breaks the naming rule; the message names it."""


def check_study_name(name: object) -> str:
    """`name` if it is a valid study name, else `StudyNameError` naming it.

    A valid name is 1 to 128 characters from letters, digits, ``.``, ``_`` and ``-``,
    starts with a letter or digit and holds no ``..``: so it is the same string on every
    backend and one path component that stays inside its folder.

    Example:
        >>> check_study_name("zigzag-2")
        'zigzag-2'
    """
    if not isinstance(name, str) or not name:
        raise StudyNameError(f"study name {name!r} is empty; give --study NAME")
    shown = name if len(name) <= 40 else f"{name[:37]}..."
    if len(name) > MAX_STUDY_NAME:
        raise StudyNameError(
            f"study name {shown!r} is {len(name)} characters long; the limit is {MAX_STUDY_NAME}"
        )
    if not _STUDY_NAME.match(name) or ".." in name:
        raise StudyNameError(
            f"study name {shown!r} is not allowed: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, without '..'"
        )
    return name
