"""The `seglab serve` application: a web page and an HTTP API over one or more models (FastAPI on uvicorn).

Endpoints:
- `GET /`: the page (drop images, overlay with an opacity slider, legend with pixel shares, hover read-out,
  label PNG download, whole / slide and flip, several models side by side).
- `POST /v1/predict?model=&mode=&flip=&format=png|json&rle=&labels=`: the image as the raw body or a multipart
  field `file`; the label map as an indexed PNG, or JSON with per-class areas, optional COCO RLE masks and
  (`labels=true`) the label map itself.
- `GET /v1/models`: name, classes, palette, input size and inference settings of each model.
- `GET /healthz`: liveness, queue lengths and batching counters. OpenAPI docs at `/docs`.

Under load: requests are batched per model (`BatchQueue`), a full queue answers 503 with `Retry-After`, a request
past `timeout` answers 504; uploads over `max_bytes` or `max_pixels` answer 413 naming the limit; an empty or
truncated upload 400, a non-image 415, an image the model cannot take (too small) 422. Grayscale, alpha and
16-bit images are converted (the JSON says so). None of these stops the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import math
import secrets
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from PIL import Image, UnidentifiedImageError

from seglab.data.datasets import DatasetError, decode_image
from seglab.hub.predictor import Predictor
from seglab.serve.batching import BatchQueue, QueueFullError
from seglab.tools.visualize import label_picture

TOKEN_COOKIE = "seglab_token"


@dataclass
class ServeOptions:
    """Limits and behaviour of the server.

    Attributes:
        token: required on every request but /healthz and /docs (a `Bearer` header, or the page's cookie).
        max_bytes: largest upload.
        max_pixels: largest image (width x height).
        max_batch: requests per forward pass at most.
        max_wait_ms: how long a request waits for others to batch with.
        queue_size: waiting requests per model before 503.
        timeout: seconds a request may take, queue included, before 504.
    """

    token: str | None = None
    max_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_batch: int = 8
    max_wait_ms: float = 10.0
    queue_size: int = 64
    timeout: float = 60.0


@dataclass
class ServedModel:
    """A model under a name: its predictor (classes, palette, pipeline) and what the listing says of it."""

    name: str
    predictor: Predictor
    description: str = ""
    queue: BatchQueue | None = field(default=None, repr=False)

    def info(self) -> dict[str, Any]:
        p = self.predictor
        return {"name": self.name, "description": self.description, "classes": list(p.classes),
                "palette": [list(c) for c in p.palette], "input_size": list(p.transform.scale or []) or None,
                "mode": p.mode, "crop_size": list(p.crop_size) if p.crop_size else None,
                "stride": list(p.stride) if p.stride else None, "flip": p.flip,
                "mean": list(p.transform.mean), "std": list(p.transform.std)}

    def run_batch(self, key: tuple, images: list[torch.Tensor]) -> list[np.ndarray]:
        mode, flip, _ = key
        return list(self.predictor.labels_batch(images, mode=mode, flip=flip).numpy())


def _png_bytes(labels: np.ndarray, palette: list[tuple[int, int, int]]) -> bytes:
    """An indexed PNG of `labels` with the palette, as `seglab predict` writes it (16-bit grayscale beyond 255
    classes)."""
    buffer = io.BytesIO()
    if len(palette) <= 255:
        picture = label_picture(labels, palette)
    else:
        picture = Image.fromarray(labels.astype(np.uint16))
    picture.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _rle(labels: np.ndarray, index: int) -> dict[str, Any]:
    """COCO's compressed RLE of `labels == index` (`pycocotools.mask.decode` reads it back)."""
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray((labels == index).astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def _check_pixels(data: bytes, max_pixels: int) -> None:
    """413 for an image over `max_pixels`, 415 for bytes that are no image, read from the header only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as picture:
                width, height = picture.size
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"the image is too large to read: {exc}") from None
    except UnidentifiedImageError:
        raise HTTPException(415, f"the upload ({len(data)} bytes) is not an image format seglab reads (PNG, JPEG, "
                                 f"TIFF, BMP, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise HTTPException(400, f"cannot read the image header: {exc}") from None
    if width * height > max_pixels:
        raise HTTPException(413, f"the image is {width} x {height} = {width * height} pixels; the limit is "
                                 f"{max_pixels} pixels (seglab serve --max-pixels)")


def create_app(models: list[ServedModel], options: ServeOptions | None = None) -> FastAPI:
    """The ASGI application serving `models` (the first is the default) under `options`."""
    options = options or ServeOptions()
    if not models:
        raise ValueError("seglab serve needs at least one model")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must differ, got {names}")
    by_name = {m.name: m for m in models}
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seglab-inference")
    page = resources.files("seglab.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for m in models:
            m.queue = BatchQueue(m.run_batch, executor, options.max_batch, options.max_wait_ms, options.queue_size)
            m.queue.start()
        yield
        for m in models:
            if m.queue is not None:
                await m.queue.stop()

    app = FastAPI(title="seglab serve", version="1", lifespan=lifespan,
                  description="Semantic segmentation over HTTP: the label map of an image as a PNG, or per-class "
                              "areas and masks as JSON.")

    def authorised(request: Request) -> bool:
        if options.token is None:
            return True
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(TOKEN_COOKIE, "")
        return secrets.compare_digest(given.encode(), options.token.encode())

    def require_token(request: Request) -> None:
        if not authorised(request):
            raise HTTPException(401, "this server needs a token: send `Authorization: Bearer TOKEN` (the page: open "
                                     "/?token=TOKEN once)", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request, token: str | None = None):
        if options.token is not None and token is not None:
            if not secrets.compare_digest(token.encode(), options.token.encode()):
                raise HTTPException(401, "wrong token")
            response = RedirectResponse("/", status_code=303)  # the token leaves the address bar for a cookie
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        require_token(request)
        return HTMLResponse(page)

    @app.get("/healthz", summary="liveness, queue lengths and batching counters")
    async def healthz():
        return {"status": "ok", "models": {m.name: {"waiting": m.queue.waiting if m.queue else 0,
                                                    **(m.queue.stats.as_dict() if m.queue else {})}
                                           for m in models}}

    @app.get("/v1/models", summary="the served models: classes, palette, input size, inference settings")
    async def list_models(request: Request):
        require_token(request)
        return [m.info() for m in models]

    async def read_upload(request: Request) -> bytes:
        limit = options.max_bytes
        too_large = HTTPException(413, f"the upload is larger than the limit of {limit} bytes "
                                       f"(seglab serve --max-bytes)")
        content_type = request.headers.get("content-type", "")
        length = request.headers.get("content-length")
        multipart = content_type.startswith("multipart/form-data")
        if length is not None and length.isdigit() and int(length) > limit + (65536 if multipart else 0):
            raise too_large
        if multipart:
            form = await request.form(max_files=1, max_fields=8)
            upload = form.get("file") or form.get("image")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "a multipart upload needs the image in a file field named 'file'")
            data = await upload.read(limit + 1)
        else:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
            data = b"".join(chunks)
        if len(data) > limit:
            raise too_large
        if not data:
            raise HTTPException(400, "the upload is empty (0 bytes): send the image file's bytes as the body, or "
                                     "as a multipart field 'file'")
        return data

    @app.post("/v1/predict", summary="segment one image",
              responses={200: {"content": {"image/png": {}, "application/json": {}},
                               "description": "the label map (indexed PNG) or JSON"},
                         400: {"description": "empty, truncated or unreadable upload"},
                         401: {"description": "missing or wrong token"},
                         413: {"description": "upload over the byte or pixel limit"},
                         415: {"description": "not an image"}, 422: {"description": "image the model cannot take"},
                         503: {"description": "queue full: retry after Retry-After seconds"},
                         504: {"description": "took longer than the server's timeout"}})
    async def predict(
        request: Request,
        model: str | None = Query(None, description="model name (default: the first served)"),
        mode: str | None = Query(None, pattern="^(whole|slide)$", description="inference mode (default: the "
                                                                              "model's)"),
        flip: bool | None = Query(None, description="horizontal flip test-time augmentation"),
        format: str = Query("png", pattern="^(png|json)$", description="png: the label map; json: areas"),
        rle: bool = Query(False, description="json: COCO RLE masks of the classes present"),
        labels: bool = Query(False, description="json: the label map too (PNG and raw, base64)"),
    ):
        require_token(request)
        served = by_name.get(model or names[0])
        if served is None:
            raise HTTPException(404, f"no model {model!r}; served: {', '.join(names)}")
        started = time.perf_counter()
        data = await read_upload(request)
        _check_pixels(data, options.max_pixels)
        try:  # off the event loop: a large image takes a while to decode
            image, conversions = await asyncio.to_thread(decode_image, data, "upload", options.max_pixels)
        except DatasetError as exc:
            raise HTTPException(400, str(exc)) from None
        decoded = time.perf_counter()
        p = served.predictor
        use_mode, use_flip = mode or p.mode, p.flip if flip is None else flip
        if use_mode == "slide" and not (p.crop_size and p.stride):
            raise HTTPException(422, f"{served.name} has no slide window size; it was served for whole inference")
        assert served.queue is not None
        try:
            label_map = await served.queue.submit((use_mode, use_flip, tuple(image.shape[-2:])), image,
                                                  timeout=max(options.timeout - (decoded - started), 0.001))
        except QueueFullError:
            stats = served.queue.stats
            per_batch = stats.busy_seconds / stats.batches if stats.batches else 1.0
            retry = max(1, math.ceil(served.queue.waiting / options.max_batch * per_batch))
            raise HTTPException(503, f"the server is busy ({served.queue.waiting} requests waiting for "
                                     f"{served.name}); retry after {retry} s", headers={"Retry-After": str(retry)})
        except TimeoutError:
            raise HTTPException(504, f"the request took longer than the server's timeout of {options.timeout:g} s "
                                     f"(seglab serve --timeout)") from None
        except ValueError as exc:
            raise HTTPException(422, f"{served.name} cannot segment this {image.shape[2]} x {image.shape[1]} "
                                     f"image: {exc}") from None
        except (MemoryError, torch.OutOfMemoryError):
            raise HTTPException(503, f"out of memory segmenting a {image.shape[2]} x {image.shape[1]} image; retry "
                                     f"later or send a smaller image", headers={"Retry-After": "5"}) from None
        done = time.perf_counter()
        if format == "png":
            return Response(_png_bytes(label_map, p.palette), media_type="image/png",
                            headers={"X-Seglab-Model": served.name, "X-Seglab-Classes": str(len(p.classes))})
        height, width = label_map.shape
        counts = np.bincount(label_map.ravel().astype(np.int64), minlength=len(p.classes))
        present = [int(c) for c in np.flatnonzero(counts)]
        body: dict[str, Any] = {
            "model": served.name, "width": width, "height": height, "mode": use_mode, "flip": use_flip,
            "classes": [{"index": c, "name": p.classes[c], "color": list(p.palette[c]), "pixels": int(counts[c]),
                         "share": float(counts[c]) / (height * width)} for c in present],
            "conversions": conversions,
            "timing_ms": {"decode": 1000 * (decoded - started), "inference": 1000 * (done - decoded)},
        }
        if rle:
            body["masks"] = {str(c): _rle(label_map, c) for c in present}
        if labels:
            raw = label_map.astype(np.uint8 if len(p.classes) <= 255 else np.uint16)
            body["labels_png"] = base64.b64encode(_png_bytes(label_map, p.palette)).decode("ascii")
            body["labels_raw"] = {"dtype": str(raw.dtype), "shape": [height, width],
                                  "data": base64.b64encode(raw.astype(raw.dtype.newbyteorder("<")).tobytes()
                                                           ).decode("ascii")}
        return JSONResponse(body)

    return app
