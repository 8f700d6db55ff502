"""A local stand-in for the Hugging Face Hub and for plain download hosts, on 127.0.0.1.

It speaks what `huggingface_hub` and `torch.hub.download_url_to_file` use: the Hub's file API
(`HEAD`/`GET /<owner>/<name>/resolve/<revision>/<file>`, answering with the `X-Repo-Commit`, `ETag` (the SHA-256, as
for LFS files) and size headers `hf_hub_download` reads, and the Hub's error codes), the upload API `push_to_hub`
uses (`/api/repos/create`, `preupload`, `commit` with base64 "regular" files), and plain files for direct URLs
(reached through `SEGLAB_WEIGHTS_MIRROR`). Faults can be injected per path: `html` (a 200 answer with a sign-in
page), `truncate` (half the file, with a matching Content-Length, as a broken mirror serves it) and `corrupt` (one
byte changed). Every request is recorded in `requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in</body></html>\n"


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}  # repo id -> file name -> bytes (revision "main")
        self.files: dict[str, bytes] = {}  # URL path -> bytes
        self.faults: dict[str, str] = {}  # URL path -> html | truncate | corrupt
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_hub_file(self, repo: str, name: str, data: bytes) -> None:
        self.repos.setdefault(repo, {})[name] = data

    def add_file(self, path: str, data: bytes) -> None:
        self.files[path] = data

    def commit(self, repo: str) -> str:
        files = self.repos.get(repo, {})
        digest = hashlib.sha1()
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha256(files[name]).digest())
        return digest.hexdigest()

    def count(self, prefix: str = "") -> int:
        return sum(1 for _, path in self.requests if path.startswith(prefix))

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                      head: bool = False) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, status: int, obj) -> None:
                self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def _serve(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                with hub.lock:
                    hub.requests.append((self.command, path))
                parts = path.strip("/").split("/")
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, name = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
                    if repo not in hub.repos:
                        return self._send(401, b"Repository not found", {"X-Error-Code": "RepoNotFound"}, head)
                    if name not in hub.repos[repo]:
                        return self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound",
                                                                      "X-Repo-Commit": hub.commit(repo)}, head)
                    data = hub.repos[repo][name]
                    sha = hashlib.sha256(data).hexdigest()
                    body = self._faulty(path, data)
                    headers = {"X-Repo-Commit": hub.commit(repo), "ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"',
                               "X-Linked-Size": str(len(body)), "Accept-Ranges": "bytes"}
                    return self._send(200, body, headers, head)
                if path in hub.files:
                    return self._send(200, self._faulty(path, hub.files[path]),
                                      {"Content-Type": "application/octet-stream"}, head)
                return self._send(404, b"not found", {}, head)

            def _faulty(self, path: str, data: bytes) -> bytes:
                fault = hub.faults.get(path)
                if fault == "html":
                    return HTML_PAGE
                if fault == "truncate":
                    return data[: len(data) // 2]
                if fault == "corrupt":
                    return data[:-1] + bytes([data[-1] ^ 0xFF])
                return data

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def do_POST(self):
                path = unquote(urlsplit(self.path).path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with hub.lock:
                    hub.requests.append(("POST", path))
                if path == "/api/repos/create":
                    spec = json.loads(body)
                    repo = spec["name"] if not spec.get("organization") else f"{spec['organization']}/{spec['name']}"
                    hub.repos.setdefault(repo, {})
                    return self._json(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":  # the model card's front matter must be YAML
                    import yaml

                    content = json.loads(body)["content"]
                    try:
                        yaml.safe_load(content.split("---")[1])
                    except (IndexError, yaml.YAMLError) as exc:
                        return self._json(400, {"error": f"invalid YAML front matter: {exc}"})
                    return self._json(200, {"errors": [], "warnings": []})
                parts = path.strip("/").split("/")
                if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "commit":
                    repo = f"{parts[2]}/{parts[3]}"
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            value = item["value"]
                            hub.add_hub_file(repo, value["path"], base64.b64decode(value["content"]))
                        elif item["key"] == "lfsFile":
                            return self._json(400, {"error": "this test hub takes regular uploads only"})
                    oid = hub.commit(repo)
                    return self._json(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid,
                                            "pullRequestUrl": None})
                return self._json(404, {"error": f"no route {path}"})

        return Handler


def point_seglab_at(hub: FakeHub, tmp_path, monkeypatch) -> FakeHub:
    """Empty seglab and Hugging Face caches under `tmp_path`, the Hub API and the mirrored URLs on `hub`, online."""
    monkeypatch.setenv("SEGLAB_HOME", str(tmp_path / "seglab"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("SEGLAB_WEIGHTS_MIRROR", hub.url + "/mirror")
    for name in ("HF_HUB_OFFLINE", "SEGLAB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    hub.requests.clear()
    hub.faults.clear()
    return hub


def checkpoint_bytes(state: dict, file_name: str) -> bytes:
    """A state dict as its publisher stores it under this name: safetensors, or `torch.save`."""
    import io

    import torch

    if file_name.endswith(".safetensors"):
        from safetensors.torch import save

        return save({k: v.contiguous() for k, v in state.items()})
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def hf_segformer_b0_ade(file_name: str, seed: int) -> bytes:
    """A transformers SegFormer-B0 for ADE20K (150 labels, the `nvidia/segformer-b0-finetuned-ade-512-512` config)
    with random weights, in the format `file_name` names."""
    import torch
    import transformers

    config = transformers.SegformerConfig(num_labels=150, hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2],
                                          decoder_hidden_size=256, num_attention_heads=[1, 2, 5, 8])
    torch.manual_seed(seed)
    return checkpoint_bytes(transformers.SegformerForSemanticSegmentation(config).state_dict(), file_name)
