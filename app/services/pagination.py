"""Pages of a list: the body every paginated answer shares, and one page of a query."""

import math

from sqlalchemy import func

from app.extensions import db


def page_body(items, *, page, per_page, total, **extra):
    """``{"items", "page", "per_page", "total", "pages"}`` (plus ``extra`` keys, e.g. the queue)."""
    return {**extra, "items": items, "page": page, "per_page": per_page, "total": total,
            "pages": math.ceil(total / per_page) if total else 0}


def page_of(query, page, per_page):
    """``(rows, total)``: page ``page`` (from 1) of an ordered query of one entity, and how many in all."""
    total = db.session.scalar(db.select(func.count()).select_from(query.order_by(None).subquery()))
    rows = db.session.execute(query.limit(per_page).offset((page - 1) * per_page)).scalars().all()
    return rows, total
