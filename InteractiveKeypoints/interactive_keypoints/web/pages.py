"""The launcher's own small pages (errors, sign-in): one HTML shape for all of them."""

from __future__ import annotations

import html

from aiohttp import web


def page(status: int, title: str, body: str, headers=None) -> web.Response:
    """An HTML page; ``body`` is HTML already (escape what a visitor sent before putting it in)."""
    text = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body style='font-family: sans-serif; margin: 3em;'><h2>{html.escape(title)}</h2>"
        f"<p id='ik-launcher-message'>{body}</p></body></html>"
    )
    return web.Response(status=status, text=text, content_type="text/html", headers=headers)
