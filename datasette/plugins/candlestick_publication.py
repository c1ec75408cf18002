"""Datasette plugin of the candle publication: forwards Datasette's hooks to the package.

Loaded with ``datasette --plugins-dir datasette/plugins``; the code lives in
``candlestick_pipeline/defs/publish/datasette_plugin.py`` (typed and tested there).
"""

from candlestick_pipeline.defs.publish import datasette_plugin as plugin
from datasette import hookimpl


@hookimpl
def startup(datasette):
    plugin.startup(datasette)


@hookimpl
def asgi_wrapper(datasette):
    return plugin.asgi_wrapper(datasette)


@hookimpl
def register_routes():
    return plugin.routes()


@hookimpl(tryfirst=True)
def handle_exception(datasette, request, exception):
    return plugin.handle_exception(datasette, request, exception)


@hookimpl
def forbidden(datasette, request, message):
    return plugin.forbidden(datasette, request, message)


@hookimpl
def menu_links(datasette, actor):
    return plugin.menu_links(datasette)


@hookimpl
def register_output_renderer(datasette):
    return plugin.output_renderers()


@hookimpl
def prepare_connection(conn):
    plugin.prepare_connection(conn)
