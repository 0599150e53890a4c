"""Every access decision of the archive, for every channel: what a context may see and do.

Visibility is a SQL condition on studies (`visible_to`), applied by every query, retrieve,
commitment and delete, so a study that is not visible is as absent as one that does not
exist. Role checks raise through `Context.refused`, so each refusal is logged and recorded
once. The rules (DESIGN.md "Access, shares, emergency access, consent and audit"): an admin
sees every study; a provider sees the studies its organization sent (`study_owners`: a study
may have several) and those shared with it until the share is revoked or expires; a
clinician's emergency access reads any study, audited with its reason; an unregistered AE
may only echo and store; only admins delete; the worklist belongs to its performing
organization. The master patient index's care relationship joins them in [7/10].
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, CompoundSelect, and_, exists, false, or_, select, true, union_all

from storage.access.context import Context
from storage.access.principal import Role
from storage.index.db import db_now
from storage.index.models import ScheduledProcedureStep as SPS
from storage.index.models import Share, Study, StudyOwner

#: organization -> its visibility expression; one object per organization, so statements built
#: on it are recognized by identity (`storage.retrieve.retrieval._one_instance_query`)
_by_org: dict[str, ColumnElement[bool]] = {}
_MAX_ORGS = 4096


def visible_to(ctx: Context) -> ColumnElement[bool]:
    """The SQL filter on studies (`Study`) that `ctx` may see, for every search and retrieve."""
    principal = ctx.principal
    if principal.is_admin or ctx.emergency:
        return true()
    if principal.org is None:
        return false()
    expression = _by_org.get(principal.org)
    if expression is None:
        if len(_by_org) >= _MAX_ORGS:
            _by_org.clear()
        expression = _by_org[principal.org] = _of_org(principal.org)
    return expression


def _of_org(org: str) -> ColumnElement[bool]:
    """Owned by `org`, or shared with it now (the database's clock, so the expression can be kept).

    Written as `studies.id IN (owned UNION ALL shared)`, not as two correlated EXISTS: both
    planners then read the organization's study ids from `ix_study_owners_org_date` once
    instead of probing two indexes for every study they walk (a 1,000-study page of one of 20
    organizations at 1M instances: 36.8 -> 12.5 ms on SQLite, benchmarks/README.md).
    """
    owned = select(StudyOwner.study_id).where(StudyOwner.org_id == org)
    shared = select(Share.study_id).where(_active_share_to(org))
    return Study.id.in_(union_all(owned, shared))


def visible_by_date(ctx: Context, newest: int | None = None) -> CompoundSelect[tuple[int, str]] | None:
    """The (study id, study date) of every study `ctx` may see, each once, for an organization;
    None when `ctx` sees every study or none (`visible_to` is then `true()` or `false()`).

    For a page of an organization's newest studies without reading the others' rows: its own
    from `ix_study_owners_org_date` (date copied into `study_owners`), with the few shared ones
    it does not own. With `newest`, of its own only the `newest` latest (by date, then id): a
    page of n studies from offset o needs no more than the newest n + o of them, and the index
    stops there. The same rule as `visible_to`, which tests/storage/access checks it against.
    """
    principal = ctx.principal
    if principal.is_admin or ctx.emergency or principal.org is None:
        return None
    org = principal.org
    owned = select(StudyOwner.study_id.label("study_pk"), StudyOwner.study_date.label("study_date")).where(
        StudyOwner.org_id == org
    )
    if newest is not None:  # a subquery: SQLite takes no LIMIT inside a UNION's member
        latest = owned.order_by(StudyOwner.study_date.desc(), StudyOwner.study_id.desc()).limit(newest).subquery()
        owned = select(latest.c.study_pk, latest.c.study_date)
    also_owned = exists().where(StudyOwner.study_id == Study.id, StudyOwner.org_id == org)
    shared = select(Study.id, Study.study_date).where(
        Study.id.in_(select(Share.study_id).where(_active_share_to(org))), ~also_owned
    )
    return union_all(owned, shared)


def _active_share_to(org: str) -> ColumnElement[bool]:
    """A share to `org` that is neither revoked nor expired (the database's clock)."""
    return and_(
        Share.to_org == org,
        Share.revoked_at.is_(None),
        or_(Share.expires_at.is_(None), Share.expires_at > db_now()),
    )


def may_write_into(ctx: Context, owners: set[str]) -> bool:
    """Whether `ctx` may add instances to an existing study owned by `owners` over STOW-RS or import.

    A share or an emergency access reads, it never writes: a token holder writes into its
    organization's studies only (an admin and the console anywhere). A modality is not asked:
    `storage.ingest` makes its organization a co-owner, since a device cannot know who sees what.
    """
    principal = ctx.principal
    return principal.is_admin or (principal.org is not None and principal.org in owners)


def may_read(ctx: Context) -> bool:
    """Whether `ctx` may query or retrieve at all (before any study filter).

    DESIGN.md "DICOM surface": an unregistered calling AE (a DICOM node without an
    organization) may C-ECHO and C-STORE only; every token holder and every registered AE
    may read within what `visible_to` lets it see.
    """
    principal = ctx.principal
    return principal.is_admin or principal.org is not None or not principal.has(Role.MODALITY)


def require_read(ctx: Context, action: str) -> None:
    """Refuse (`NotAuthorized`: DIMSE 0x0124 Refused: Not Authorized; HTTP 403) unless `may_read`."""
    if not may_read(ctx):
        raise ctx.refused(action, f"calling AE {ctx.principal.sub} is not registered")


def require_admin(ctx: Context, action: str) -> None:
    """Refuse `action` unless the caller has the admin role (deleting studies and series)."""
    if not ctx.principal.is_admin:
        raise ctx.refused(action, f"{action} needs the admin role")


def worklist_managed_by(ctx: Context) -> ColumnElement[bool]:
    """The worklist steps `ctx` may manage over the admin API: all for an admin, its
    organization's for an integrator; anyone else is refused."""
    principal = ctx.principal
    if principal.is_admin:
        return true()
    if principal.has(Role.INTEGRATOR) and principal.org:
        return SPS.org_id == principal.org
    raise ctx.refused("worklist", "managing the worklist needs the admin or integrator role")


def require_schedule_for(ctx: Context, org: str | None) -> None:
    """Refuse scheduling a step for another organization than the integrator's own."""
    worklist_managed_by(ctx)
    if not ctx.principal.is_admin and org != ctx.principal.org:
        raise ctx.refused("worklist", "an integrator schedules for its own organization only")


def worklist_visible_to(ctx: Context) -> ColumnElement[bool]:
    """The steps a modality's worklist query sees: its organization's (all for an admin)."""
    principal = ctx.principal
    if principal.is_admin:
        return true()
    return SPS.org_id == principal.org if principal.org else false()
