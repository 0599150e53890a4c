"""Placeholder router; filled in by the delete work of issue [2/7]."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
