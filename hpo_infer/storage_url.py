"""Storage URLs: SQLite (embedded default) or PostgreSQL (shared by a fleet), checked without
touching a database; passwords masked wherever a URL may be shown."""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_STORAGE = "sqlite:///hpo-infer.db"


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a study storage, or None. Never touches the database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        return f"not a database URL: {mask(url)!r} (use sqlite:///FILE or postgresql://USER@HOST/DB)"
    backend = u.get_backend_name()
    if backend == "sqlite":
        if not u.database or u.database == ":memory:":
            return "sqlite needs a file (sqlite:///FILE): an in-memory database would lose every trial"
        parent = Path(u.database).expanduser().resolve().parent
        if not parent.is_dir():
            return f"directory {parent} of the sqlite file does not exist"
        return None
    if backend == "postgresql":
        if not u.database:
            return f"no database name in {mask(url)!r}"
        return None
    return f"unsupported database {backend!r} in {mask(url)!r} (use sqlite or postgresql)"


def normalise(url: str) -> str:
    """postgresql:// uses psycopg 3, the driver the ``postgres`` extra installs."""
    if re.match(r"^postgres(ql)?://", url):
        return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)
    return url


def mask(text: str) -> str:
    """Replace any password in URLs inside ``text`` by ***."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", str(text))


def choose(flag: str | None) -> str:
    """The storage a command works on: ``--storage``, else ``$HPO_INFER_STORAGE``, else the
    default file; checked, with the error naming where the bad URL came from."""
    from hpo_infer.errors import InputError

    env = os.environ.get("HPO_INFER_STORAGE")
    url = flag or env or DEFAULT_STORAGE
    problem = check_url(url)
    if problem:
        raise InputError("--storage" if flag else "HPO_INFER_STORAGE" if env else "storage", problem)
    return url
