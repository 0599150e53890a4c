"""Claiming the studies an AE sent before anyone registered it: they join its organization.

An unknown calling AE may store (DESIGN.md "DICOM surface"); its studies are held unassigned,
visible to admins only, and its patient IDs live in its AE title's namespace. Once the AE is
registered (`pacs org add ORG --ae AET`), `pacs org claim ORG --ae AET` files those studies
under ORG, in one transaction, and moves their patient identities to ORG's namespace, where
the AE's later studies land, so one patient is not split in two.
"""

from __future__ import annotations

from sqlalchemy import insert, select, update

from storage.access.context import Context
from storage.access.orgs import org_of_ae
from storage.archive import Archive
from storage.index.models import Study, StudyOwner, utcnow
from storage.patients.identities import move_to_org


def claim(ae_title: str, org: str, ctx: Context, *, archive: Archive) -> int:
    """File the unassigned studies `ae_title` sent under `org`; how many there were.

    Raises
    ------
    ValueError
        `ae_title` is not registered to `org` (register it first: a claim follows the registry).
    """
    title = ae_title.strip()
    with archive.db.read() as session:
        owner = org_of_ae(session, title)
    if owner != org:
        where = f"registered to {owner}" if owner else "not registered"
        raise ValueError(f"AE {title} is {where}: pacs org add {org} --ae {title} first")
    with archive.db.write_conn() as conn:
        rows = conn.execute(
            select(Study.id, Study.study_uid, Study.patient_id, Study.study_date).where(
                Study.org_id.is_(None), Study.source_ae == title
            )
        ).all()
        ids = [row.id for row in rows]
        if ids:
            conn.execute(update(Study).where(Study.id.in_(ids)).values(org_id=org))
            conn.execute(
                insert(StudyOwner),
                [{"study_id": r.id, "org_id": org, "study_date": r.study_date, "created_at": utcnow()} for r in rows],
            )
            move_to_org(conn, ids, title, org)
    for row in rows:
        ctx.audit.record(ctx.event("claim", "ok", patient=row.patient_id, study=row.study_uid, detail=f"to {org}"))
    return len(ids)
