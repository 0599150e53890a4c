"""Every access decision of the archive, for every channel: what a context may see and do.

Visibility is a SQL condition on studies (`visible_to`), applied by every query, retrieve,
commitment and delete, so a study that is not visible is as absent as one that does not
exist. Role checks raise through `Context.refused`, so each refusal is logged and recorded
once. Until per-organization visibility lands ([6/10]), every principal allowed to read sees
every study; the rules that exist already (an unregistered AE may only echo and store, only
admins delete, the worklist belongs to its performing organization) all live here.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, false, true

from storage.access.context import Context
from storage.access.principal import Role
from storage.index.models import ScheduledProcedureStep as SPS


def visible_to(ctx: Context) -> ColumnElement[bool]:
    """The SQL filter on studies that `ctx` may see (all, until [6/10])."""
    del ctx
    return true()


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
