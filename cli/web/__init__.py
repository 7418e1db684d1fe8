"""``datablame serve``: the review loop in a browser, served by the app itself (no CDN, no network).

    guard.py      the request guard: trusted hosts, the access token, the CSRF token, security headers
    evidence.py   one explainer per server, loaded on first use: evidence for a flag, explanations of texts
    app.py        the Starlette app: the flags, explain and run pages and their JSON API over the store
    templates/    Jinja2 pages (autoescaped); static/ the CSS and plain JavaScript they load
"""
