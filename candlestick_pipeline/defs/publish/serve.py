"""The command that serves the publication with Datasette 0.65, configured as a read-only product.

``datasette_command(path, host, port)`` returns the argv; the CLI (``candlestick serve``) runs it.

* Mutable mode (no ``-i``): the pipeline writes the file while Datasette serves it; ``-i``
  (immutable) on a live file gives "database disk image is malformed" (FACTS G15). The file is
  in WAL mode, Datasette opens it ``mode=ro``.
* ``default_allow_sql off``: no arbitrary SQL (``?sql=`` is a 403); canned queries still work.
  ``$CANDLESTICK_DATASETTE_ALLOW_SQL=1`` (or ``allow_sql=True``) turns the SQL editor on, e.g. for
  an internal instance.
* ``allow_download off`` (no whole-file download), ``allow_csv_stream off`` (CSV is one page, at
  most ``max_returned_rows``), ``allow_facet off`` and ``suggest_facets off`` (facets over ten
  million rows are full scans), ``sql_time_limit_ms`` 1000, ``max_returned_rows`` 1000,
  ``default_page_size`` 100.
* CORS (``--cors``: ``Access-Control-Allow-Origin: *``) is off unless ``cors=True`` or
  ``$CANDLESTICK_DATASETTE_CORS=1``.

Paged JSON (benchmark B4, ``benchmarks/bench_datasette.py``): a 1000-candle ``_shape=array`` page
would spend most of its time in Datasette's Python rather than in SQLite. The plugin
(:mod:`.datasette_plugin`) keeps the answers byte-for-byte Datasette's and makes them cheaper: a
column-wise ``.json`` renderer for ``_shape=array``; for anonymous ``GET``s of
``/publication/candle_series.json?...&_shape=array`` and of one series of
``/publication/candles.json?secid=..&board=..&timeframe=..[&begin__gte=..][&_size=..][&_next=..]
&_shape=array``, one or two trips to a Datasette SQL thread instead of six to thirteen, and no
Datasette view machinery (everything else, and any error, is Datasette's own path;
``$CANDLESTICK_DATASETTE_FAST_JSON=0`` turns the short way off); a ``candle_series`` SQL that
seeks straight to ``from``/``after`` (``metadata.yaml``); and the ~200,000 objects loaded at
startup frozen out of the cyclic garbage collector.
Clients should page with ``_shape=array`` and the ``Link: rel=next`` header (or ``after=`` for
``candle_series``), as the bench does.
"""

from __future__ import annotations

import os
from pathlib import Path

from candlestick_pipeline.lib.scripts import console_script

REPO_ROOT = Path(__file__).resolve().parents[3]
DATASETTE_DIR_ENV = "CANDLESTICK_DATASETTE_DIR"
DATASETTE_DIR = Path(os.environ.get(DATASETTE_DIR_ENV) or REPO_ROOT / "datasette").resolve()
"""``metadata.yaml``, ``plugins/``, ``templates/`` and ``static/`` (``$CANDLESTICK_DATASETTE_DIR``)."""
METADATA = DATASETTE_DIR / "metadata.yaml"
PLUGINS_DIR = DATASETTE_DIR / "plugins"
TEMPLATES_DIR = DATASETTE_DIR / "templates"
STATIC_DIR = DATASETTE_DIR / "static"
STATIC_MOUNT = "assets"

ALLOW_SQL_ENV = "CANDLESTICK_DATASETTE_ALLOW_SQL"
CORS_ENV = "CANDLESTICK_DATASETTE_CORS"

SETTINGS: dict[str, str] = {
    "default_allow_sql": "off",
    "allow_download": "off",
    "allow_csv_stream": "off",
    "allow_facet": "off",
    "suggest_facets": "off",
    "sql_time_limit_ms": "1000",
    "facet_time_limit_ms": "200",
    "max_returned_rows": "1000",
    "default_page_size": "100",
    "num_sql_threads": "3",
}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def datasette_command(
    path: Path | str,
    host: str = "127.0.0.1",
    port: int = 8001,
    *,
    allow_sql: bool | None = None,
    cors: bool | None = None,
    extra_settings: dict[str, str] | None = None,
) -> list[str]:
    """The argv that serves the publication at ``path`` on ``host:port``.

    ``allow_sql``/``cors`` default to ``$CANDLESTICK_DATASETTE_ALLOW_SQL`` / ``$CANDLESTICK_DATASETTE_CORS``.
    The file must exist (create it with ``publication.ensure_schema`` or a rebuild first).
    """
    if allow_sql is None:
        allow_sql = _env_flag(ALLOW_SQL_ENV)
    if cors is None:
        cors = _env_flag(CORS_ENV)
    settings = dict(SETTINGS)
    if allow_sql:
        settings["default_allow_sql"] = "on"
    settings.update(extra_settings or {})
    argv = [
        *console_script("datasette"),
        "serve",
        str(Path(path)),
        "--host",
        host,
        "--port",
        str(port),
        "--metadata",
        str(METADATA),
        "--plugins-dir",
        str(PLUGINS_DIR),
        "--template-dir",
        str(TEMPLATES_DIR),
        "--static",
        f"{STATIC_MOUNT}:{STATIC_DIR}",
    ]
    for name, value in settings.items():
        argv += ["--setting", name, value]
    if cors:
        argv.append("--cors")
    return argv
