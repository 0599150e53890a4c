"""Annotated dependencies shared by the routes: the archive, settings and the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.auth import get_principal
from storage.access import Principal
from storage.archive import Archive
from storage.settings import Settings


def get_archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


ArchiveDep = Annotated[Archive, Depends(get_archive)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
