"""Account administration: the list of accounts with their feedback, and (de)activation.

A deactivated account cannot log in or refresh, its tokens are refused at once on every
endpoint (``app.security``), and its labels are left out of training and of the trust
rules' evidence (``app.services.trust.load_feedback``). Nothing of it is deleted:
activating it again brings all of that back, except its old tokens: every token issued
before the deactivation stays refused (the account was perhaps stopped because they were
stolen), so its owner logs in again.
"""

import logging
import time
from datetime import datetime, timezone

from sqlalchemy import func

from app.entities import FEEDBACK_STATUSES, Feedback, User
from app.errors import Conflict, NotFound
from app.extensions import db
from app.security import cutoff_second
from app.services.accounts import get_user
from app.services.pagination import page_body, page_of

log = logging.getLogger(__name__)


def feedback_counts(user_ids):
    """``{user_id: {status: count}}`` for these accounts (every status present), in one query."""
    counts = {user_id: dict.fromkeys(FEEDBACK_STATUSES, 0) for user_id in user_ids}
    if counts:
        rows = db.session.execute(
            db.select(Feedback.user_id, Feedback.status, func.count())
            .where(Feedback.user_id.in_(counts))
            .group_by(Feedback.user_id, Feedback.status)
        )
        for user_id, status, count in rows:
            counts[user_id][status] = count
    return counts


def account_body(user, feedback):
    return {"id": user.id, "username": user.username, "email": user.email, "role": user.role,
            "active": user.active, "created_at": user.created_at, "feedback": feedback}


def list_accounts(page, per_page, *, active=None, role=None):
    """A page of accounts, oldest first, optionally only the (in)active ones or one role."""
    query = db.select(User).order_by(User.id)
    if active is not None:
        query = query.where(User.active.is_(active))
    if role is not None:
        query = query.where(User.role == role)
    users, total = page_of(query, page, per_page)
    counts = feedback_counts([user.id for user in users])
    return page_body([account_body(user, counts[user.id]) for user in users],
                     page=page, per_page=per_page, total=total)


def describe(user):
    """One account's body, as ``list_accounts`` gives it."""
    return account_body(user, feedback_counts([user.id])[user.id])


def find_by_username(username):
    user = db.session.execute(db.select(User).filter_by(username=username)).scalar_one_or_none()
    if user is None:
        raise NotFound(f"no account named {username!r}", code="user_not_found")
    return user


def set_active(user_id, active, *, by=None):
    """Activate or deactivate an account (idempotent); ``by`` is the admin doing it (None:
    the command line). Refused (409) when an admin would deactivate their own account, or
    the last active admin: nobody could then administer the service except from the shell."""
    user = get_user(user_id)
    if user.active == active:
        return user
    if not active:
        if by is not None and user.id == by:
            raise Conflict("an admin cannot deactivate their own account", code="cannot_deactivate_self")
        if user.role == "admin":
            # Locks every active admin's row (PostgreSQL; SQLite has one writer anyway), in
            # id order: two admins deactivating each other at once cannot both succeed.
            admins = db.session.scalars(
                db.select(User.id).where(User.role == "admin", User.active.is_(True)).order_by(User.id)
                .with_for_update()
            ).all()
            if set(admins) <= {user.id}:
                db.session.rollback()
                raise Conflict("the last active admin cannot be deactivated", code="last_admin")
        user.tokens_valid_after = datetime.now(timezone.utc)
    elif user.tokens_valid_after is not None:
        # Tokens of the cut-off's own second are refused (their whole-second ``iat`` cannot
        # say whether they came before it), so a login in that second after activation would
        # get a token refused at once: activation waits, at most a second, for the next one.
        # Only a deactivation undone within the same second ever waits.
        time.sleep(max(0.0, cutoff_second(user.tokens_valid_after) + 1 - time.time()))
    user.active = active
    db.session.commit()
    log.info("account %s (id %d) %s by %s", user.username, user.id, "activated" if active else "deactivated",
                f"admin id {by}" if by is not None else "the command line")
    return user
