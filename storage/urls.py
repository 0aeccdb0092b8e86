"""Where a study lives: resolving, checking and masking storage URLs.

A URL comes from the caller, else from the `AUTOSEARCH_STORAGE` environment variable,
else from the file named by `AUTOSEARCH_STORAGE_FILE`, else it is a SQLite file
`autosearch.db` in the working folder. Passwords never leave
this module unmasked in a message: every error names the URL through `mask_url`.

``grpc://host:port`` names a storage proxy (`autosearch proxy`, see `storage.proxy`)
instead of a database: the proxy holds the database connections for many workers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

DEFAULT_DB_FILE = "autosearch.db"
ENV_VAR = "AUTOSEARCH_STORAGE"
# A file holding the URL: batch schedulers and secret mounts hand over files, and a file
# with mode 600 keeps the password out of job listings and process tables.
FILE_ENV_VAR = "AUTOSEARCH_STORAGE_FILE"
# Optuna's own command line reads this one; honoured after ours, so that a shell set up
# for `optuna` works with `autosearch` too.
OPTUNA_ENV_VAR = "OPTUNA_STORAGE"

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
# psycopg 3 is the driver we ship; SQLAlchemy would otherwise pick psycopg2 for a bare
# `postgresql://`, and `postgres://` (Heroku style) is not a dialect name at all.
_PG_SCHEMES = ("postgres://", "postgresql://")
_PG_DRIVER_SCHEME = "postgresql+psycopg://"
GRPC_SCHEME = "grpc://"
_QUERY_SECRETS = frozenset({"password", "passwd", "pwd"})
_MASK = "***"
# `scheme://user:secret@host` -> `user:***@`. Greedy up to the last `@` before the query:
# a raw `@` inside the password would otherwise leave its tail in view, since SQLAlchemy
# ends the password at the first `@` and reads the rest as the host.
_USERINFO_SECRET = re.compile(r"^([^:/?#]*://[^:/@\s]*:)[^?]*@")


class StorageURLError(ValueError):
    """A storage URL is neither a SQLAlchemy URL nor a SQLite file path."""


def mask_url(url: str | URL) -> str:
    """The URL as text with any password replaced by ``***``.

    Both the ``user:password@`` part and ``password=`` query parameters are masked. Text
    that does not parse as a URL is still scrubbed of a ``user:password@`` part.

    Args:
        url: A URL string or SQLAlchemy `URL`.

    Returns:
        Text safe to print or log.

    Example:
        >>> mask_url("postgresql+psycopg://bob:s3cret@db:5432/autosearch")
        'postgresql+psycopg://bob:***@db:5432/autosearch'
    """
    text = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)
    text = _USERINFO_SECRET.sub(rf"\1{_MASK}@", text, count=1)
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError, TypeError):
        return text
    secret_keys = [k for k in parsed.query if k.lower() in _QUERY_SECRETS]
    if not secret_keys:
        return text  # as given: rendering would percent-encode, e.g. `:memory:`
    parsed = parsed.update_query_dict({k: _MASK for k in secret_keys})
    # The query masks are percent-encoded on rendering; show them as plain asterisks.
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", _MASK)


def _sqlite_url(path: str | Path) -> str:
    # Absolute, so that workers started from other folders open the same file.
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def _url_from_file() -> str:
    path = os.environ.get(FILE_ENV_VAR, "").strip()
    if not path:
        return ""
    try:
        value = Path(path).expanduser().read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise StorageURLError(
            f"cannot read the storage URL from {FILE_ENV_VAR}={path}: {reason}"
        ) from None
    if not value:
        raise StorageURLError(f"{FILE_ENV_VAR}={path} is empty; it should hold one URL")
    return value


def resolve_url(url: str | None = None) -> str:
    """The storage URL to use, normalised.

    Order: the `url` argument, else the `AUTOSEARCH_STORAGE` environment variable, else
    the contents of the file named by `AUTOSEARCH_STORAGE_FILE` (surrounding whitespace
    dropped), else Optuna's `OPTUNA_STORAGE`, else ``sqlite:///<cwd>/autosearch.db``. A
    bare file path ending in ``.db``, ``.sqlite`` or ``.sqlite3`` means a SQLite file
    (made absolute). ``postgres://`` and ``postgresql://`` get the psycopg 3 driver:
    ``postgresql+psycopg://``.

    Args:
        url: An explicit URL or SQLite file path; None or empty to fall back.

    Returns:
        A SQLAlchemy URL string, password included (mask it before printing).

    Raises:
        StorageURLError: The value is not a SQLAlchemy URL of a known dialect, or the
            `AUTOSEARCH_STORAGE_FILE` cannot be read or is empty. The message names the
            value with its password masked, or the file.

    Example:
        >>> resolve_url("postgres://bob@db/autosearch")
        'postgresql+psycopg://bob@db/autosearch'
    """
    value = (url or os.environ.get(ENV_VAR) or "").strip() or _url_from_file()
    value = value or os.environ.get(OPTUNA_ENV_VAR, "").strip()
    if not value:
        return _sqlite_url(Path.cwd() / DEFAULT_DB_FILE)
    if value.lower().startswith(GRPC_SCHEME):
        host, port = proxy_address(value)
        return f"{GRPC_SCHEME}{host}:{port}"
    if "://" not in value and value.lower().endswith(_SQLITE_SUFFIXES):
        return _sqlite_url(value)
    for scheme in _PG_SCHEMES:
        if value.startswith(scheme):
            value = _PG_DRIVER_SCHEME + value[len(scheme) :]
            break
    if _raw_at_in_password(value):
        raise StorageURLError(
            f"the password in {mask_url(value)!r} holds a raw '@': write it as %40, so that "
            "the host is not read from the password's tail"
        )
    try:
        # Loading the dialect catches typos such as `sqllite:///` here, not at connect time.
        make_url(value).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise StorageURLError(
            f"not a storage URL: {mask_url(value)!r} ({e}); expected a SQLAlchemy URL such "
            f"as sqlite:///path/{DEFAULT_DB_FILE} or postgresql+psycopg://user@host/db, "
            f"or a file path ending in {', '.join(_SQLITE_SUFFIXES)}"
        ) from None
    return value


def proxy_address(url: str) -> tuple[str, int]:
    """The (host, port) of a ``grpc://host:port`` storage proxy URL.

    Raises:
        StorageURLError: Not a ``grpc://`` URL, or its host or port is missing or bad.

    Example:
        >>> proxy_address("grpc://10.0.0.5:13000")
        ('10.0.0.5', 13000)
    """
    text = url.strip()
    is_proxy = text.lower().startswith(GRPC_SCHEME)
    rest = text[len(GRPC_SCHEME) :] if is_proxy else ""
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")  # an IPv6 literal: grpc://[::1]:13000
    if not is_proxy or not sep or not host or "/" in rest:
        raise StorageURLError(
            f"not a storage proxy URL: {url!r}; expected grpc://host:port, "
            "e.g. grpc://127.0.0.1:13000"
        )
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise StorageURLError(f"storage proxy URL {url!r}: port {port!r} is not 1-65535")
    return host, int(port)


def is_grpc(url: str | None) -> bool:
    """Whether `url` (or, when None, the URL it resolves to) names a storage proxy."""
    return resolve_url(url).startswith(GRPC_SCHEME)


def _raw_at_in_password(value: str) -> bool:
    found = _USERINFO_SECRET.match(value)
    return found is not None and "@" in found.group(0)[len(found.group(1)) : -1]


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names, or None for an in-memory database.

    Understands the URI form (``sqlite:///file:/path/a.db?mode=ro&uri=true``), whose
    database part is not a path: its ``file:`` prefix and options are stripped.
    """
    parsed = make_url(resolve_url(url))
    database = parsed.database or ""
    if parsed.query.get("uri") in ("true", "1") or database.startswith("file:"):
        database = unquote(database.removeprefix("file:").split("?", 1)[0])
        if database.startswith("//"):  # file://host/path: only the local host is meant
            database = "/" + database[2:].split("/", 1)[-1]
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        return None
    return Path(database)


def is_memory(url: str) -> bool:
    """Whether `url` names an in-memory SQLite database, which only one process sees."""
    return is_sqlite(url) and sqlite_file(url) is None


def _backend(url: str) -> str:
    return make_url(resolve_url(url)).get_backend_name()


def is_sqlite(url: str) -> bool:
    """Whether `url` (or a bare SQLite path) names a SQLite database."""
    return _backend(url) == "sqlite"


def is_postgres(url: str) -> bool:
    """Whether `url` names a PostgreSQL database, whatever the driver."""
    return _backend(url) == "postgresql"
