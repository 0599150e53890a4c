"""/api/orgs: institutions and their DICOM nodes, for admins (DESIGN.md "HTTP surface").

Thin routes over `storage.access.orgs`; the same operations as `pacs org`. Disabling an
organization (`PATCH {"disabled": true}`) refuses its tokens and AEs from their next request
or association, in every process.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.deps import PRINTABLE, ApiContext, ArchiveDep
from storage.access import orgs
from storage.access.orgs import ORG_ID_RE, AeSpec, OrgSummary
from storage.access.policy import require_admin
from storage.errors import NotFound, RejectedInput
from storage.settings import AE_TITLE_RE

router = APIRouter(prefix="/api/orgs", tags=["Organizations (admin)"])

OrgId = Annotated[str, Path(pattern=ORG_ID_RE.pattern, max_length=64, examples=["spital-sf-spiridon"])]
AeTitle = Annotated[str, Path(pattern=AE_TITLE_RE.pattern, max_length=16, examples=["CT1"])]

_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "A field is missing or malformed; the problem names it"},
    403: {"description": "The caller is not an admin"},
}
_ONE: dict[int | str, dict[str, Any]] = {**_RESPONSES, 404: {"description": "No such organization"}}


class NewAe(BaseModel):
    """An AE to register (the request body)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ae_title: str = Field(pattern=AE_TITLE_RE.pattern, max_length=16)
    host: str | None = Field(
        default=None, min_length=1, max_length=255, pattern=PRINTABLE, description="where C-MOVE sends to it"
    )
    port: int | None = Field(default=None, ge=1, le=65535)
    allowed_from: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="address or network (CIDR) its associations must come from",
    )
    tls_subject: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=PRINTABLE,
        description="CN of the client certificate it must present over DICOM TLS",
    )


class Ae(NewAe):
    """A registered AE (the answer)."""

    model_config = ConfigDict(extra="forbid")

    bound: bool = Field(default=False, description="whether its associations are held to an address or certificate")


class Org(BaseModel):
    id: str
    name: str
    aes: list[Ae]
    studies: int
    disabled: bool
    check_ae_address: bool


class NewOrg(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(pattern=ORG_ID_RE.pattern, max_length=64)
    name: str = Field(min_length=1, max_length=256, pattern=PRINTABLE)
    aes: list[NewAe] = Field(default_factory=list, max_length=256)


class OrgChange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(default=None, min_length=1, max_length=256, pattern=PRINTABLE)
    disabled: bool | None = None
    check_ae_address: bool | None = Field(
        default=None, description="false for a site behind NAT: its AEs are accepted from any address"
    )


def _org(summary: OrgSummary) -> Org:
    return Org(
        id=summary.id,
        name=summary.name,
        aes=[_ae(a) for a in summary.aes],
        studies=summary.studies,
        disabled=summary.disabled,
        check_ae_address=summary.check_ae_address,
    )


def _ae(a: AeSpec) -> Ae:
    return Ae(
        ae_title=a.ae_title,
        host=a.host,
        port=a.port,
        allowed_from=a.allowed_from,
        tls_subject=a.tls_subject,
        bound=a.bound(),
    )


def _spec(a: NewAe) -> AeSpec:
    return AeSpec(a.ae_title, a.host, a.port if a.host else None, a.allowed_from, a.tls_subject)


@router.get("", summary="List organizations", responses=_RESPONSES)
def list_orgs(archive: ArchiveDep, ctx: ApiContext) -> list[Org]:
    require_admin(ctx, "list organizations")
    with archive.db.read() as session:
        return [_org(o) for o in orgs.list_orgs(session)]


@router.post("", status_code=201, summary="Register an organization", responses=_RESPONSES)
def create(spec: NewOrg, archive: ArchiveDep, ctx: ApiContext, response: Response) -> Org:
    require_admin(ctx, "register an organization")
    try:
        with archive.db.write() as session:
            summary = orgs.add_org(session, spec.id, spec.name, [_spec(a) for a in spec.aes])
    except ValueError as exc:
        raise RejectedInput(str(exc)) from None
    response.headers["Location"] = f"{router.prefix}/{summary.id}"
    return _org(summary)


@router.get("/{org_id}", summary="One organization", responses=_ONE)
def get(org_id: OrgId, archive: ArchiveDep, ctx: ApiContext) -> Org:
    require_admin(ctx, "read an organization")
    with archive.db.read() as session:
        try:
            return _org(orgs.get_org(session, org_id))
        except KeyError:
            raise NotFound(f"no organization {org_id}") from None


@router.patch("/{org_id}", summary="Rename, disable or enable an organization", responses=_ONE)
def patch(org_id: OrgId, change: OrgChange, archive: ArchiveDep, ctx: ApiContext) -> Org:
    require_admin(ctx, "change an organization")
    try:
        with archive.db.write() as session:
            return _org(
                orgs.update_org(
                    session,
                    org_id,
                    name=change.name,
                    disabled=change.disabled,
                    check_ae_address=change.check_ae_address,
                )
            )
    except KeyError:
        raise NotFound(f"no organization {org_id}") from None


@router.get("/{org_id}/aes", summary="An organization's AEs", responses=_ONE)
def list_aes(org_id: OrgId, archive: ArchiveDep, ctx: ApiContext) -> list[Ae]:
    return get(org_id, archive, ctx).aes


@router.post("/{org_id}/aes", status_code=201, summary="Register an AE of an organization", responses=_ONE)
def add_ae(org_id: OrgId, ae: NewAe, archive: ArchiveDep, ctx: ApiContext) -> Ae:
    require_admin(ctx, "register an AE")
    try:
        with archive.db.write() as session:
            orgs.get_org(session, org_id)
            summary = orgs.add_org(session, org_id, None, [_spec(ae)])
    except KeyError:
        raise NotFound(f"no organization {org_id}") from None
    except ValueError as exc:
        raise RejectedInput(str(exc)) from None
    return next(_ae(a) for a in summary.aes if a.ae_title == ae.ae_title)


@router.delete("/{org_id}/aes/{ae_title}", status_code=204, summary="Unregister an AE", responses=_ONE)
def remove_ae(org_id: OrgId, ae_title: AeTitle, archive: ArchiveDep, ctx: ApiContext) -> Response:
    require_admin(ctx, "unregister an AE")
    try:
        with archive.db.write() as session:
            orgs.remove_ae(session, org_id, ae_title)
    except KeyError:
        raise NotFound(f"organization {org_id} has no AE {ae_title}") from None
    return Response(status_code=204)
