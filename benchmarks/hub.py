"""A local stand-in for the Hugging Face Hub: serves pipeline folders as Hub repos on loopback.

huggingface_hub and diffusers talk to it unchanged (point `HF_ENDPOINT` at `LocalHub.endpoint`), so
what a download would fetch can be measured and tested without the network: the API routes the
download path uses (repo info, the recursive tree listing) and the file route (HEAD for the size,
GET for the bytes, ranges included). `downloads` lists every file a client fetched with GET, in
order. Weight files are listed as LFS files, as the Hub stores them.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

_LFS = re.compile(r"\.(safetensors|bin|ckpt|msgpack|onnx|pt|pth)$")


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


@dataclass
class LocalHub:
    repos: dict[str, Path]  # repo id -> folder
    endpoint: str = ""
    downloads: list[tuple[str, str]] = field(default_factory=list)  # (repo id, path) per GET

    def _files(self, repo: str) -> list[Path]:
        folder = self.repos[repo]
        return sorted(p for p in folder.rglob("*") if p.is_file())

    def _sha(self, repo: str) -> str:
        files = self._files(repo)
        return _digest(repo, *(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files))[:40]

    def _entry(self, repo: str, path: Path) -> dict[str, object]:
        rel = str(path.relative_to(self.repos[repo]))
        size = path.stat().st_size
        blob = _digest(repo, rel, size, path.stat().st_mtime_ns)
        entry: dict[str, object] = {"type": "file", "path": rel, "size": size, "oid": blob[:40]}
        if _LFS.search(rel):
            entry["lfs"] = {"oid": blob, "size": size, "pointerSize": 134}
        return entry

    def _repo(self, request: web.Request) -> str:
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        if repo not in self.repos:
            raise web.HTTPNotFound(headers={"X-Error-Code": "RepoNotFound"}, text="Repository not found")
        return repo

    async def info(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        siblings = [{"rfilename": str(p.relative_to(self.repos[repo]))} for p in self._files(repo)]
        body = {"id": repo, "sha": self._sha(repo), "private": False, "gated": False, "disabled": False}
        return web.json_response(body | {"siblings": siblings})

    async def tree(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        return web.json_response([self._entry(repo, p) for p in self._files(repo)])

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        root = self.repos[repo].resolve()
        path = (root / request.match_info["path"]).resolve()
        if root not in path.parents or not path.is_file():
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound"}, text="Entry not found")
        entry = self._entry(repo, path)
        lfs: Any = entry.get("lfs")
        headers = {"X-Repo-Commit": self._sha(repo), "ETag": f'"{(lfs or entry)["oid"]}"'}
        if request.method == "HEAD":
            return web.Response(headers=headers | {"Content-Length": str(entry["size"])})
        self.downloads.append((repo, str(entry["path"])))
        return web.FileResponse(path, headers=headers)

    def app(self) -> web.Application:
        app = web.Application()
        repo = "{org}/{name}"
        for route in (f"/api/models/{repo}", f"/api/models/{repo}/revision/{{rev}}"):
            app.router.add_get(route, self.info)
        app.router.add_get(f"/api/models/{repo}/tree/{{rev}}", self.tree)
        app.router.add_route("*", f"/{repo}/resolve/{{rev}}/{{path:.+}}", self.resolve)
        return app


@contextmanager
def serve_hub(repos: dict[str, Path]) -> Iterator[LocalHub]:
    """Run a LocalHub on a loopback port in a thread for the duration of the block."""
    hub = LocalHub(repos)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(hub.app(), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    hub.endpoint = f"http://127.0.0.1:{port}"
    thread = threading.Thread(target=loop.run_forever, name="local-hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
