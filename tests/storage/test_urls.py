from __future__ import annotations

from pathlib import Path

import pytest
from autosearch.storage.urls import (
    DEFAULT_DB_FILE,
    ENV_VAR,
    FILE_ENV_VAR,
    StorageURLError,
    is_postgres,
    is_sqlite,
    mask_url,
    resolve_url,
)
from sqlalchemy.engine import make_url

SECRET = "hunter2"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv(FILE_ENV_VAR, raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)


def test_default_is_sqlite_file_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_url() == f"sqlite:///{tmp_path.resolve() / DEFAULT_DB_FILE}"
    assert resolve_url("") == resolve_url(None)


def test_env_beats_default_and_argument_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "postgresql+psycopg://env@db/envdb")
    assert resolve_url() == "postgresql+psycopg://env@db/envdb"
    assert resolve_url("sqlite:////tmp/arg.db") == "sqlite:////tmp/arg.db"


@pytest.mark.parametrize("name", ["runs/a.db", "b.sqlite", "c.SQLITE3"])
def test_bare_path_is_absolute_sqlite(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = resolve_url(name)
    assert url == f"sqlite:///{tmp_path.resolve() / name}"
    assert Path(make_url(url).database).is_absolute()
    assert is_sqlite(name) and not is_postgres(name)


def test_home_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_url("~/x.db") == f"sqlite:///{tmp_path.resolve() / 'x.db'}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
        ("postgresql://u:pw@h/db", "postgresql+psycopg://u:pw@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
    ],
)
def test_postgres_gets_psycopg3(given: str, expected: str) -> None:
    assert resolve_url(given) == expected
    assert is_postgres(given) and not is_sqlite(given)


@pytest.mark.parametrize(
    "bad", ["not a url", "notes.txt", "sqllite:///x.db", f"http://bob:{SECRET}@host/x"]
)
def test_bad_url_names_masked_value(bad: str) -> None:
    with pytest.raises(StorageURLError) as info:
        resolve_url(bad)
    message = str(info.value)
    assert SECRET not in message
    assert mask_url(bad) in message


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        (f"postgresql+psycopg://bob:{SECRET}@db:5432/s", [SECRET]),
        # Reserved characters travel percent-encoded; neither form may leak.
        ("postgresql://bob:p%40ss%3Aw%2Frd@db/s", ["p@ss:w/rd", "p%40ss%3Aw%2Frd"]),
        (f"postgresql+psycopg://bob@db/s?password={SECRET}&sslmode=require", [SECRET]),
        (f"weird scheme://bob:{SECRET}@db/s", [SECRET]),
    ],
)
def test_mask_hides_password_everywhere(url: str, secrets: list[str]) -> None:
    masked = mask_url(url)
    assert "***" in masked
    printed = [masked, f"{masked}", repr(masked), mask_url(masked)]
    if " " not in url:
        # A parsed URL masks too. (SQLAlchemy's own str() hides only the userinfo password,
        # not a `password=` query parameter, so print URLs through mask_url only.)
        printed.append(mask_url(make_url(url)))
    for form in printed:
        for secret in secrets:
            assert secret not in form, form


def test_mask_keeps_url_without_password() -> None:
    assert mask_url("postgresql+psycopg://bob@db:5432/s") == "postgresql+psycopg://bob@db:5432/s"
    assert mask_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_url_file_comes_after_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "storage-url"
    secret_file.write_text(f"postgres://bob:{SECRET}@db/file\n")
    monkeypatch.setenv(FILE_ENV_VAR, str(secret_file))
    assert resolve_url() == f"postgresql+psycopg://bob:{SECRET}@db/file"
    monkeypatch.setenv(ENV_VAR, "postgresql+psycopg://env@db/envdb")
    assert resolve_url() == "postgresql+psycopg://env@db/envdb"
    assert resolve_url("sqlite:////tmp/arg.db") == "sqlite:////tmp/arg.db"


def test_optunas_variable_comes_after_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTUNA_STORAGE", "postgres://optuna@db/shared")
    assert resolve_url() == "postgresql+psycopg://optuna@db/shared"
    url_file = tmp_path / "storage-url"
    url_file.write_text("sqlite:////tmp/from-file.db")
    monkeypatch.setenv(FILE_ENV_VAR, str(url_file))
    assert resolve_url() == "sqlite:////tmp/from-file.db"
    monkeypatch.setenv(ENV_VAR, "sqlite:////tmp/ours.db")
    assert resolve_url() == "sqlite:////tmp/ours.db"


@pytest.mark.parametrize(("content", "why"), [(None, "No such file"), ("  \n", "is empty")])
def test_unreadable_or_empty_url_file_names_the_file(
    content: str | None, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "storage-url"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv(FILE_ENV_VAR, str(path))
    with pytest.raises(StorageURLError, match=why) as info:
        resolve_url()
    assert f"{FILE_ENV_VAR}={path}" in str(info.value)


def test_bad_url_in_file_is_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "storage-url"
    path.write_text(f"http://bob:{SECRET}@host/x")
    monkeypatch.setenv(FILE_ENV_VAR, str(path))
    with pytest.raises(StorageURLError) as info:
        resolve_url()
    assert SECRET not in str(info.value)


def test_a_raw_at_in_the_password_does_not_leak_its_tail() -> None:
    url = "postgresql+psycopg://bob:hunter@2cats@db:5432/s"
    masked = mask_url(url)
    assert masked == "postgresql+psycopg://bob:***@db:5432/s"
    assert "2cats" not in mask_url(make_url(url)) and "hunter" not in masked
    with pytest.raises(StorageURLError, match="%40") as info:
        resolve_url(url)
    assert "hunter" not in str(info.value) and "2cats" not in str(info.value)


def test_sqlite_file_understands_uri_urls(tmp_path: Path) -> None:
    from autosearch.storage.urls import is_memory, sqlite_file

    assert sqlite_file(f"sqlite:///file:{tmp_path}/a.db?mode=ro&uri=true") == tmp_path / "a.db"
    assert sqlite_file(f"sqlite:///{tmp_path}/b.db") == tmp_path / "b.db"
    assert is_memory("sqlite:///:memory:") and is_memory("sqlite://")
    assert not is_memory(f"sqlite:///{tmp_path}/b.db")
