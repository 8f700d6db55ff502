"""`seglab serve` in a real browser: headless Chromium (Debian's chromium + chromium-driver, through Selenium) loads
the page from a server this test starts on 127.0.0.1, uploads an image, waits for the overlay, checks the legend
against the API's answer for the same image, reads a class under the cursor, and saves a screenshot to
`test-artifacts/serve_page.png`."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="seglab serve needs the serve extra: pip install 'seglab[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test drives Chromium through selenium")
import httpx  # noqa: E402
import uvicorn  # noqa: E402

import seglab  # noqa: E402
from seglab.hub.predictor import Predictor  # noqa: E402
from seglab.serve.app import ServedModel, create_app  # noqa: E402

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CLASSES = ["background", "square", "circle", "triangle", "ring", "star"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    torch.manual_seed(0)
    models = []
    for name, seed in (("segformer", 0), ("segformer-b", 1)):
        torch.manual_seed(seed)
        model = seglab.create_model("segformer_b0", num_classes=6, drop_path_rate=0.0)
        model.seglab_meta = {"classes": CLASSES}
        models.append(ServedModel(name, Predictor(model, device="cpu")))
    port = _free_port()
    config = uvicorn.Config(create_app(models), host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver (CI installs them)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_page_segments_an_uploaded_image(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rng = np.random.default_rng(0)
    image = np.full((120, 160, 3), 50, np.uint8)
    image[20:80, 30:110] = (210, 40, 40)
    image = np.clip(image.astype(int) + rng.integers(-25, 25, image.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "shapes.png"
    Image.fromarray(image).save(path)
    expected = {name: [c["name"] for c in httpx.post(f"{server}/v1/predict?format=json&model={name}",
                                                     content=path.read_bytes(), timeout=60).json()["classes"]]
                for name in ("segformer", "segformer-b")}

    browser.get(server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    browser.find_element(By.ID, "file").send_keys(str(path))
    wait.until(lambda d: "done" in d.find_element(By.ID, "status").text or "error" in
               (d.find_element(By.ID, "status").get_attribute("class") or ""))
    assert "done" in browser.find_element(By.ID, "status").text, browser.find_element(By.ID, "status").text

    panels = browser.find_elements(By.CSS_SELECTOR, ".panel")
    assert [p.get_attribute("data-model") for p in panels] == ["segformer", "segformer-b"]  # side by side, in order
    for panel in panels:
        model = panel.get_attribute("data-model")
        legend = [e.text for e in panel.find_elements(By.CSS_SELECTOR, ".legend li .name")]
        assert legend == expected[model] and legend, (model, legend, expected[model])
        canvas = panel.find_element(By.CSS_SELECTOR, "canvas.overlay")
        assert (int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))) == (160, 120)
        ActionChains(browser).move_to_element(canvas).perform()  # the centre: the class there is read out
        hover = panel.find_element(By.CSS_SELECTOR, ".hover").text
        assert hover.startswith("(") and hover.split(": ")[-1] in CLASSES, hover
        link = panel.find_element(By.CSS_SELECTOR, "a[download]")
        assert link.get_attribute("href").startswith("data:image/png;base64,")
    # the overlay is drawn: the canvas holds the image blended with label colours, not a blank
    pixels = browser.execute_script(
        "const c = document.querySelector('canvas.overlay');"
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data.slice(0, 4000));")
    assert len(set(pixels)) > 10
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "serve_page.png"))
    assert Image.open(io.BytesIO((ARTIFACTS / "serve_page.png").read_bytes())).size[0] > 0
