"""A real viewer: the OHIF Viewer (3.13) in headless Chromium lists the studies and draws one.

OHIF's built app ships in the npm package @ohif/app (`dist/`, about 50 MB). It is fetched
once with `npm pack` into a cache outside the repository (PACS_OHIF_CACHE, default
~/.cache/pacs-tests) and served by a small static server with an app-config.js whose
DICOMweb data source points at the gateway, the bearer token sent by the browser. Playwright drives Debian's
Chromium. The screenshot is kept in test-artifacts/ and must hold non-blank image pixels.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.kit import dicom_factory as f
from tests.kit.dicomweb import Gateway, serve_gateway
from tests.kit.net import http_server
from tests.kit.seed import seed
from tests.kit.tools import missing

OHIF_VERSION = "3.13.2"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


def ohif_dist() -> Path:
    cache = Path(os.environ.get("PACS_OHIF_CACHE", Path.home() / ".cache" / "pacs-tests"))
    dist = cache / f"ohif-{OHIF_VERSION}" / "package" / "dist"
    if (dist / "index.html").exists():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        missing("npm (to fetch @ohif/app)", "npm")
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(npm), "pack", f"@ohif/app@{OHIF_VERSION}", "--pack-destination", str(cache)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    with tarfile.open(cache / f"ohif-app-{OHIF_VERSION}.tgz") as tar:
        tar.extractall(cache / f"ohif-{OHIF_VERSION}", filter="data")
    return dist


def app_config(gateway_url: str) -> str:
    return f"""window.config = {{
  routerBasename: '/', extensions: [], modes: [], showStudyList: true, maxNumberOfWebWorkers: 2,
  defaultDataSourceName: 'pacs',
  dataSources: [{{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'pacs',
    configuration: {{
      friendlyName: 'Municipal PACS', name: 'pacs',
      wadoUriRoot: '{gateway_url}/wado', qidoRoot: '{gateway_url}/dicomweb', wadoRoot: '{gateway_url}/dicomweb',
      qidoSupportsIncludeField: true, imageRendering: 'wadors', thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true, supportsFuzzyMatching: true, supportsWildcard: true, staticWado: false,
      singlepart: 'bulkdata,video', bulkDataURI: {{ enabled: true }}, omitQuotationForMultipartRequest: true,
    }},
  }}],
}};
"""


class _OhifHandler(http.server.SimpleHTTPRequestHandler):
    """Serves dist/, our app-config.js, and index.html for the single-page app's routes."""

    config = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "application/javascript")
            self.send_header("Content-Length", str(len(self.config)))
            self.end_headers()
            self.wfile.write(self.config)
            return
        if not (Path(self.directory) / path.lstrip("/")).is_file():
            self.path = "/index.html"
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def ohif() -> Iterator[tuple[str, http.server.ThreadingHTTPServer]]:
    """OHIF served on its own origin, and a gateway that allows that origin (CORS)."""
    dist = ohif_dist()
    with http_server(functools.partial(_OhifHandler, directory=str(dist))) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}", server


def _ingest_study(gateway: Gateway) -> str:
    study, series = f.uid(), f.uid()
    for i in range(6):
        ds = f.ct_dataset(
            study_uid=study,
            series_uid=series,
            patient_name="Ştefănescu^Ioana",
            charset="ISO_IR 101",
            rows=256,
            columns=256,
            instance_number=i + 1,
        )
        y, x = np.mgrid[0:256, 0:256]
        ds.PixelData = (((x + y + 40 * i) % 512) * 4).astype(np.uint16).tobytes()  # a visible gradient
        ds.WindowCenter, ds.WindowWidth = "1000", "2000"
        seed(gateway.archive, ds)
    return study


@pytest.mark.parametrize("settings", ["sqlite-fs"], indirect=True)
def test_ohif_lists_studies_and_draws_images(ohif: tuple[str, object], gateway_with_cors: Gateway) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    origin = ohif[0]
    gateway = gateway_with_cors
    study = _ingest_study(gateway)
    _OhifHandler.config = app_config(gateway.url).encode()
    # In production OHIF's study list gets the clinician's token from the city's identity provider
    # (OIDC); here the browser sends a token `pacs token` would issue with every request. The
    # viewer is then opened the way a RIS/EHR launches it: a link carrying a short-lived token
    # (`?token=`, which OHIF puts in its Authorization header and removes from the address bar),
    # in a fresh browser context that adds no header of its own.
    token = gateway.token(roles=("clinician",), ttl=600)
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(
            viewport={"width": 1280, "height": 900}, extra_http_headers={"Authorization": f"Bearer {token}"}
        )
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{origin}/", wait_until="domcontentloaded")
        page.get_by_text("Ştefănescu", exact=False).first.wait_for(timeout=60_000)  # the study list, from QIDO-RS
        page.screenshot(path=str(ARTIFACTS / "ohif-study-list.png"))
        page.close()
        launch = browser.new_page(viewport={"width": 1280, "height": 900})  # no injected header
        launch.on("pageerror", lambda e: errors.append(str(e)))
        launch.goto(f"{origin}/viewer?StudyInstanceUIDs={study}&token={token}", wait_until="domcontentloaded")
        canvas = launch.locator("canvas").first
        canvas.wait_for(timeout=60_000)
        assert "token=" not in launch.url, "OHIF keeps the token in the address bar"
        shot = ARTIFACTS / "ohif-viewer.png"
        deadline = time.monotonic() + 60
        while True:  # until the first image is decoded and drawn
            canvas.screenshot(path=str(shot))
            pixels = np.asarray(Image.open(shot).convert("L")).astype(float)
            if _gradient_drawn(pixels) or time.monotonic() > deadline:
                break
            launch.wait_for_timeout(500)
        browser.close()
    assert pixels.size > 10_000
    assert _gradient_drawn(pixels), f"the viewport shows no image; page errors: {errors[:3]}"


def _gradient_drawn(pixels: np.ndarray) -> bool:
    """The test study's gradient is on screen: the viewport's lower right clearly brighter than its
    upper left. Relative, because OHIF may dim the whole page behind a dialog of its own (seen in
    CI: the image drawn at a third of its brightness); a viewport without an image is black, with
    its date in the upper left."""
    h, w = pixels.shape
    return bool(pixels[h // 2 :, w // 2 :].mean() > pixels[: h // 2, : w // 2].mean() + 8)


@pytest.fixture()
def gateway_with_cors(ohif: tuple[str, object], settings, archive) -> Iterator[Gateway]:  # type: ignore[no-untyped-def]
    """The gateway, allowing OHIF's origin: the viewer calls it from another origin, as in production."""
    yield from serve_gateway(settings.model_copy(update={"cors_origins": [ohif[0]]}), archive)
