"""Pure pieces: settings validation and name folding."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from storage.dicom.charset import check_decodes, fold, python_encodings
from storage.errors import BadCharset
from storage.settings import Settings


def test_defaults_derive_from_the_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "v")
    assert s.database_url == f"sqlite:///{tmp_path / 'v' / 'index.db'}"
    assert s.storage_url == f"file://{tmp_path / 'v' / 'objects'}"
    assert (s.ae_title, s.dicom_port, s.http_port, s.public_url) == ("MUNIPACS", 11112, 8080, "http://127.0.0.1:8080")


def test_environment_and_normalization(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PACS_DATABASE_URL", "postgres://u:p@db:5432/pacs")
    monkeypatch.setenv("PACS_CORS_ORIGINS", "https://viewer.example, http://localhost:3000")
    monkeypatch.setenv("PACS_DICOM_PORT", "104")
    s = Settings(data_dir=tmp_path)
    assert s.database_url == "postgresql+psycopg://u:p@db:5432/pacs"
    assert s.cors_origins == ["https://viewer.example", "http://localhost:3000"]
    assert s.dicom_port == 104


@pytest.mark.parametrize(
    "bad",
    [{"ae_title": "WAY-TOO-LONG-AE-TITLE"}, {"ae_title": "A\\B"}, {"storage_url": "ftp://x"}, {"dicom_port": 70000}],
)
def test_invalid_settings_are_refused(bad: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Ştefănescu^Ioana", "STEFANESCU^IOANA"),  # s with cedilla (ISO 8859-2)
        ("Ștefănescu^Ioana", "STEFANESCU^IOANA"),  # s with comma below (Unicode)
        ("Țuțuianu^Ţara", "TUTUIANU^TARA"),
        ("Łukasz^Øre", "LUKASZ^ORE"),
        ("ｙａｍａｄａ^だ", "YAMADA^だ"),  # full-width folded, kana voicing kept
    ],
)
def test_fold(text: str, folded: str) -> None:
    assert fold(text) == folded


def test_charset_terms() -> None:
    assert python_encodings(None) == ["iso8859"]
    assert python_encodings(["", "ISO 2022 IR 87"]) == ["iso8859", "iso2022_jp"]
    with pytest.raises(BadCharset, match="unknown Specific Character Set"):
        python_encodings("ISO_IR 999")
    check_decodes("Ştefan".encode("iso8859_2"), ["iso8859_2"], "PN")
    with pytest.raises(BadCharset, match="do not decode"):
        check_decodes(b"\xff\xfe", ["utf_8"], "PN")
