"""`seglab serve`'s API through the framework's test client: every endpoint, every bad upload (and the server still
serving after it), the token, the queue limit, request batching and the timeout."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="seglab serve needs the serve extra: pip install 'seglab[serve]'")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import seglab  # noqa: E402
from seglab.hub.predictor import Predictor  # noqa: E402
from seglab.serve.app import ServedModel, ServeOptions, create_app  # noqa: E402

CLASSES = ["background", "square", "circle", "triangle", "ring", "star"]


def _predictor(seed: int = 0) -> Predictor:
    torch.manual_seed(seed)
    model = seglab.create_model("segformer_b0", num_classes=6, drop_path_rate=0.0)
    model.seglab_meta = {"classes": CLASSES}
    predictor = Predictor(model, device="cpu")
    predictor.crop_size, predictor.stride = (64, 64), (42, 42)
    return predictor


@pytest.fixture(scope="module")
def predictor():
    return _predictor()


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")  # uint16 (H, W): a 16-bit grayscale PNG
    return buffer.getvalue()


def _image(height: int = 72, width: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 40, np.uint8)
    image[10:50, 20:60] = (220, 30, 30)
    return np.clip(image.astype(int) + rng.integers(-30, 30, image.shape), 0, 255).astype(np.uint8)


def _labels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


@pytest.fixture()
def client(predictor):
    app = create_app([ServedModel("b0", predictor)], ServeOptions(max_bytes=200_000, max_pixels=300 * 300))
    with TestClient(app) as c:
        yield c


def _still_serving(client):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.post("/v1/predict", content=_png(_image())).status_code == 200


def test_models_health_and_docs(client):
    models = client.get("/v1/models").json()
    assert [m["name"] for m in models] == ["b0"] and models[0]["classes"] == CLASSES
    assert len(models[0]["palette"]) == 6 and models[0]["mode"] == "whole" and models[0]["crop_size"] == [64, 64]
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["models"]["b0"]["waiting"] == 0
    assert client.get("/docs").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "seglab serve" in page.text


def test_predict_png_equals_the_predictor(client, predictor):
    image = _image()
    response = client.post("/v1/predict", content=_png(image))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    labels = _labels(response.content)
    assert labels.shape == image.shape[:2]
    np.testing.assert_array_equal(labels, predictor(image).labels)
    multipart = client.post("/v1/predict", files={"file": ("a.png", _png(image), "image/png")})
    np.testing.assert_array_equal(_labels(multipart.content), labels)


def test_predict_json_areas_rle_and_labels(client):
    from pycocotools import mask as mask_utils

    image = _image()
    labels = _labels(client.post("/v1/predict", content=_png(image)).content)
    body = client.post("/v1/predict?format=json&rle=true&labels=true", content=_png(image)).json()
    assert (body["width"], body["height"]) == (96, 72) and body["conversions"] == []
    assert sum(c["pixels"] for c in body["classes"]) == 96 * 72
    assert sum(c["share"] for c in body["classes"]) == pytest.approx(1.0)
    for c in body["classes"]:
        assert c["name"] == CLASSES[c["index"]] and c["pixels"] == int((labels == c["index"]).sum())
        rle = {"size": body["masks"][str(c["index"])]["size"], "counts": body["masks"][str(c["index"])]["counts"]}
        np.testing.assert_array_equal(mask_utils.decode(rle), (labels == c["index"]).astype(np.uint8))
    raw = np.frombuffer(base64.b64decode(body["labels_raw"]["data"]), np.uint8).reshape(72, 96)
    np.testing.assert_array_equal(raw, labels)
    np.testing.assert_array_equal(_labels(base64.b64decode(body["labels_png"])), labels)


def test_slide_and_flip(client, predictor):
    image = _image(90, 130)
    slide = _labels(client.post("/v1/predict?mode=slide", content=_png(image)).content)
    np.testing.assert_array_equal(slide, predictor.labels_batch([torch.from_numpy(image).permute(2, 0, 1)],
                                                                mode="slide")[0].numpy())
    body = client.post("/v1/predict?format=json&flip=true", content=_png(image)).json()
    assert body["flip"] is True and body["mode"] == "whole"


@pytest.mark.parametrize("upload, status, words", [
    (b"", 400, "empty"),
    (b"this is not an image at all", 415, "not an image format"),
    ("truncated", 400, "truncated"),
    ("big-bytes", 413, "200000 bytes"),
    ("big-pixels", 413, "90000 pixels"),
    ("tiny", 422, "cannot segment"),
])
def test_bad_uploads_get_a_clear_4xx_and_the_server_keeps_serving(client, upload, status, words):
    rng = np.random.default_rng(1)
    if upload == "truncated":
        data = _png(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
        upload = data[: len(data) // 2]
    elif upload == "big-bytes":
        upload = _png(rng.integers(0, 256, (280, 280, 3), dtype=np.uint8))  # ~235 kB of noise
    elif upload == "big-pixels":
        upload = _png(np.zeros((301, 301, 3), np.uint8))
    elif upload == "tiny":
        upload = _png(np.zeros((8, 8, 3), np.uint8))  # MiT needs 29 px
    response = client.post("/v1/predict", content=upload)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    _still_serving(client)


@pytest.mark.parametrize("kind, conversions", [("gray", ["grayscale"]), ("rgba", ["alpha"]),
                                               ("gray16", ["16-bit", "grayscale"])])
def test_other_pixel_formats_are_converted(client, kind, conversions):
    image = _image()
    if kind == "gray":
        data = _png(image[..., 0])
    elif kind == "rgba":
        data = _png(np.dstack([image, np.full(image.shape[:2], 128, np.uint8)]))
    else:
        data = _png(image[..., 0].astype(np.uint16) * 257)
    body = client.post("/v1/predict?format=json", content=data).json()
    assert body["conversions"] == conversions and (body["width"], body["height"]) == (96, 72)
    _still_serving(client)


def test_unknown_model_and_bad_parameters(client):
    assert client.post("/v1/predict?model=nope", content=_png(_image())).status_code == 404
    assert client.post("/v1/predict?mode=sideways", content=_png(_image())).status_code == 422
    assert client.post("/v1/predict?format=xml", content=_png(_image())).status_code == 422
    assert client.post("/v1/predict", files={"other": ("a.txt", b"x", "text/plain")}).status_code == 400
    _still_serving(client)


def test_token(predictor):
    app = create_app([ServedModel("b0", predictor)], ServeOptions(token="s3cret"))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200  # liveness stays open
        assert client.get("/v1/models").status_code == 401
        assert client.post("/v1/predict", content=_png(_image())).status_code == 401
        assert client.get("/").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/?token=wrong").status_code == 401
        page = client.get("/?token=s3cret")  # sets the cookie, drops the token from the address
        assert page.status_code == 200 and "seglab serve" in page.text and "token" not in str(page.url)
        assert client.post("/v1/predict", content=_png(_image())).status_code == 200  # the page's cookie


async def _concurrently(app, requests: int, image: bytes):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://seglab") as client:
            responses = await asyncio.gather(*[client.post("/v1/predict", content=image) for _ in range(requests)])
            health = (await client.get("/healthz")).json()
    return responses, health


def test_concurrent_requests_are_batched(predictor):
    app = create_app([ServedModel("b0", predictor)], ServeOptions(max_batch=8, max_wait_ms=300))
    image = _image()
    responses, health = asyncio.run(_concurrently(app, 8, _png(image)))
    expected = predictor(image).labels
    for response in responses:
        assert response.status_code == 200
        np.testing.assert_array_equal(_labels(response.content), expected)
    stats = health["models"]["b0"]
    assert stats["requests"] == 8 and stats["batches"] < 8 and stats["largest_batch"] > 1, stats


def _slow(predictor, seconds: float) -> Predictor:
    slow = _predictor()
    original = slow.labels_batch

    def labels_batch(images, mode=None, flip=None):
        time.sleep(seconds)
        return original(images, mode=mode, flip=flip)

    slow.labels_batch = labels_batch
    return slow


def test_a_full_queue_answers_503_with_retry_after(predictor):
    app = create_app([ServedModel("b0", _slow(predictor, 0.3))],
                     ServeOptions(max_batch=1, max_wait_ms=0, queue_size=2))
    responses, health = asyncio.run(_concurrently(app, 8, _png(_image())))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
    refused = [r for r in responses if r.status_code == 503]
    assert all(int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["detail"] for r in refused)
    assert health["models"]["b0"]["refused"] == len(refused)


def test_timeout_answers_504_and_the_server_recovers(predictor):
    app = create_app([ServedModel("b0", _slow(predictor, 1.0))], ServeOptions(timeout=0.3))
    with TestClient(app) as client:
        response = client.post("/v1/predict", content=_png(_image()))
        assert response.status_code == 504 and "timeout of 0.3 s" in response.json()["detail"]
        time.sleep(1.0)  # the discarded batch finishes
        assert client.get("/healthz").json()["status"] == "ok"


def test_out_of_memory_answers_503_and_the_worker_goes_on(predictor):
    failing = _predictor()
    original, calls = failing.labels_batch, []

    def labels_batch(images, mode=None, flip=None):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(images, mode=mode, flip=flip)

    failing.labels_batch = labels_batch
    app = create_app([ServedModel("b0", failing)])
    with TestClient(app) as client:
        response = client.post("/v1/predict", content=_png(_image()))
        assert response.status_code == 503 and "out of memory" in response.json()["detail"]
        assert response.headers["retry-after"] == "5"
        assert client.post("/v1/predict", content=_png(_image())).status_code == 200


def test_several_models(predictor):
    other = _predictor(seed=1)
    app = create_app([ServedModel("a", predictor), ServedModel("b", other)])
    with TestClient(app) as client:
        assert [m["name"] for m in client.get("/v1/models").json()] == ["a", "b"]
        image = _image()
        a = _labels(client.post("/v1/predict?model=a", content=_png(image)).content)
        b = _labels(client.post("/v1/predict?model=b", content=_png(image)).content)
        np.testing.assert_array_equal(a, predictor(image).labels)
        np.testing.assert_array_equal(b, other(image).labels)
    with pytest.raises(ValueError, match="must differ"):
        create_app([ServedModel("a", predictor), ServedModel("a", other)])


def test_model_specs_pair_in_order():
    from seglab.cli.serve import model_specs

    specs = model_specs([("model", "a"), ("checkpoint", "a.st"), ("run", "runs/x"), ("model", "b"),
                         ("pretrained", "ade20k-512")])
    assert specs == [{"model": "a", "checkpoint": "a.st"}, {"run": "runs/x"},
                     {"model": "b", "pretrained": "ade20k-512"}]
    with pytest.raises(SystemExit, match="needs its --checkpoint"):
        model_specs([("model", "a")])
    with pytest.raises(SystemExit, match="must follow the --model"):
        model_specs([("checkpoint", "a.st")])
    assert json.dumps(specs)
