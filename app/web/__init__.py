"""The browser pages: ``/`` (draw a digit, correct the model) and ``/admin`` (watch it learn).

The pages are static HTML, CSS and a little JavaScript that call the same JSON API as any
other client, with bearer tokens kept in the page's memory only (never in web storage, so
a script injected elsewhere cannot read them later, and a reload signs out). The API itself
is unchanged: the pages add no endpoint that a token would not also need.
"""

from flask import Blueprint, render_template

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/assets")

# No inline script or style anywhere (the pages load their code from /assets), so the
# policy needs no 'unsafe-inline'; review images are fetched with the admin's token and
# shown from blob: URLs, and the photo preview is one too.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # for browsers without frame-ancestors
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "geolocation=(), microphone=(), payment=(), usb=()",
}


@bp.after_request
def _security_headers(response):
    """Every page and asset of this blueprint (the JSON API is left exactly as it was)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-cache"  # a new deployment's page, with its new scripts
    return response


@bp.get("/")
def draw():
    return render_template("draw.html", page="draw", script="draw.js")


@bp.get("/admin")
def admin():
    return render_template("admin.html", page="admin", script="admin.js")


def init_app(app):
    from app.extensions import limiter

    app.register_blueprint(bp)
    # Page loads are not API calls: a page and its assets count against no client's limits
    # (what the page then asks the API does, as from any client).
    limiter.exempt(bp)
