"""Which store a location names: a postgresql:// URL is a PostgresStore, anything else an index folder."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .index import Index
from .postgres import PostgresStore
from .store import DocumentStore


def is_database_url(location: str) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


def open_store(location: str, **kwargs) -> DocumentStore:
    """The store at `location`: a postgresql:// URL or an index folder. A URL may name the schema that
    holds spanqa's tables with a `schema` query parameter (postgresql://host/db?schema=team_a; default
    spanqa); its other parameters go to libpq (sslmode=require, ...)."""
    if is_database_url(location):
        parts = urlsplit(location)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schemas = [v for k, v in query if k == "schema"]
        if schemas:
            kwargs.setdefault("schema", schemas[-1])
            location = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"])))
        return PostgresStore(location, **kwargs)
    kwargs.pop("pool_size", None)  # a PostgreSQL setting; the in-process index has no connections
    return Index.load(location, **kwargs)
