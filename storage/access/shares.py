"""Shares: a referral that lets another organization read one study, until revoked or expired.

DESIGN.md "Access, shares, emergency access, consent and audit" and the /api/shares routes: a
clinician or integrator may share a study its own organization owns (sent), an admin any
study; the receiving organization must be registered and enabled; a reason is required (it is
what the patient and the data-protection officer read) and an expiry may be given. The share
takes effect, and ends, at once: visibility (`storage.access.policy.visible_to`) reads the
table in every query. A study the caller may not see is refused as if it did not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from storage.access.context import Context
from storage.access.policy import visible_to
from storage.access.principal import Role
from storage.errors import NotFound, RejectedInput
from storage.index.models import Organization, Share, Study, StudyOwner, utcnow

MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class ShareView:
    """A share as the API answers it."""

    id: int
    study_instance_uid: str
    from_org: str | None
    to_org: str
    reason: str
    created_by: str
    created_at: datetime
    expires: datetime | None
    revoked_at: datetime | None
    active: bool


class InvalidShare(RejectedInput):
    """A share that cannot be made: no reason, an unknown or disabled organization, a past expiry."""

    reason = "invalid_share"


def _may_share(ctx: Context, action: str) -> None:
    principal = ctx.principal
    if principal.is_admin or (principal.org and (principal.has(Role.CLINICIAN) or principal.has(Role.INTEGRATOR))):
        return
    raise ctx.refused(action, "sharing needs the clinician, integrator or admin role")


def create(
    session: Session, ctx: Context, *, study_uid: str, to_org: str, reason: str, expires: datetime | None
) -> ShareView:
    """Share `study_uid` with `to_org` for `ctx`.

    Raises
    ------
    NotAuthorized
        The caller has no role that shares, or (for a non-admin) its organization did not send
        the study but sees it through a share of its own (it cannot pass it on).
    NotFound
        The study does not exist or is not visible to the caller.
    InvalidShare
        No reason, a reason over 500 characters, an unknown or disabled organization, the
        caller's own organization, or an expiry in the past.
    """
    _may_share(ctx, "share")
    ctx.touched(study_uid)
    study_id = session.scalar(select(Study.id).where(Study.study_uid == study_uid, visible_to(ctx)))
    if study_id is None:
        raise NotFound(f"no study {study_uid}")
    principal = ctx.principal
    if not principal.is_admin:
        owned = session.scalar(
            select(StudyOwner.study_id).where(StudyOwner.study_id == study_id, StudyOwner.org_id == principal.org)
        )
        if owned is None:
            raise ctx.refused("share", "an organization shares only the studies it sent")
    reason = reason.strip()
    if not 1 <= len(reason) <= MAX_REASON:
        raise InvalidShare(f"a share needs a reason of 1 to {MAX_REASON} characters")
    target = session.get(Organization, to_org)
    if target is None or target.disabled_at is not None:
        raise InvalidShare(f"organization {to_org[:64]!r} is not registered or is disabled")
    if to_org == principal.org:
        raise InvalidShare("the study is already its own organization's")
    if expires is not None:
        expires = expires.astimezone(UTC) if expires.tzinfo else expires.replace(tzinfo=UTC)
        if expires <= datetime.now(UTC):
            raise InvalidShare("the expiry is in the past")
    share = Share(
        study_id=study_id,
        from_org=principal.org,
        to_org=to_org,
        reason=reason,
        created_by=principal.sub,
        created_at=utcnow(),
        expires_at=expires,
    )
    session.add(share)
    session.flush()
    return _view(share, study_uid)


def list_shares(session: Session, ctx: Context, *, active_only: bool = False, limit: int = 1000) -> list[ShareView]:
    """The shares `ctx` may see: every one for an admin, its organization's (made or received) otherwise."""
    _may_share(ctx, "list shares")
    query = select(Share, Study.study_uid).join(Study, Study.id == Share.study_id).order_by(Share.id.desc())
    if not ctx.principal.is_admin:
        query = query.where(or_(Share.from_org == ctx.principal.org, Share.to_org == ctx.principal.org))
    views = [_view(share, uid) for share, uid in session.execute(query.limit(limit))]
    return [v for v in views if v.active] if active_only else views


def revoke(session: Session, ctx: Context, share_id: int) -> ShareView:
    """End a share at once: an admin any, an organization the shares it made; NotFound otherwise."""
    _may_share(ctx, "revoke share")
    row = session.execute(
        select(Share, Study.study_uid).join(Study, Study.id == Share.study_id).where(Share.id == share_id)
    ).first()
    if row is None or not (ctx.principal.is_admin or row[0].from_org == ctx.principal.org):
        raise NotFound(f"no share {share_id}")
    share, uid = row
    ctx.touched(uid)
    if share.revoked_at is None:
        share.revoked_at, share.revoked_by = utcnow(), ctx.principal.sub
        session.flush()
    return _view(share, uid)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands DATETIME back without its zone; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _view(share: Share, study_uid: str) -> ShareView:
    expires, revoked = _aware(share.expires_at), _aware(share.revoked_at)
    active = revoked is None and (expires is None or expires > datetime.now(UTC))
    return ShareView(
        id=share.id,
        study_instance_uid=study_uid,
        from_org=share.from_org,
        to_org=share.to_org,
        reason=share.reason,
        created_by=share.created_by,
        created_at=_aware(share.created_at) or share.created_at,
        expires=expires,
        revoked_at=revoked,
        active=active,
    )
