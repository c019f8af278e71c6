"""A local stand-in for the Hugging Face hub's HTTP endpoint: the few routes ``HfApi.create_repo`` and
``upload_folder`` call, answered from memory, so ``langprune push`` runs the real client end to end.

Every file is offered as a regular (inline, base64) upload, so no LFS or Xet storage is involved; the
repositories it received are in ``.repos`` ({repo_id: {"private": bool, "files": {path: bytes}}}).
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubStandIn:
    def __init__(self, token: str = "hf_test"):
        self.token = token
        self.repos: dict[str, dict] = {}
        self.unknown: list[str] = []
        self.validated: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, value) -> None:
                body = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Authorization") != f"Bearer {owner.token}":
                    return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:3] == ["api", "repos", "create"]:
                    request = json.loads(body)
                    repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else None
                    repo_id = repo_id or request["name"]
                    private = bool(request.get("private")) or request.get("visibility") == "private"
                    owner.repos.setdefault(repo_id, {"private": private, "files": {}})
                    return self._reply(200, {"url": f"{owner.url}/{repo_id}", "name": repo_id})
                if parts == ["api", "validate-yaml"]:  # the card's metadata, checked before a README.md is committed
                    owner.validated.append(json.loads(body).get("content", ""))
                    return self._reply(200, {"errors": [], "warnings": []})
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._reply(200, {"files": answer, "commitOid": "0" * 40})
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "commit":
                    repo_id = f"{parts[2]}/{parts[3]}"
                    for line in body.decode().splitlines():
                        entry = json.loads(line)
                        if entry.get("key") == "file":
                            value = entry["value"]
                            owner.repos[repo_id]["files"][value["path"]] = base64.b64decode(value["content"])
                    url = f"{owner.url}/{repo_id}/commit/{'1' * 40}"
                    return self._reply(200, {"commitUrl": url, "commitOid": "1" * 40, "pullRequestUrl": None})
                owner.unknown.append(f"POST {self.path}")
                return self._reply(404, {"error": f"stand-in has no route {self.path}"})

            def do_GET(self) -> None:
                owner.unknown.append(f"GET {self.path}")
                return self._reply(404, {"error": f"stand-in has no route {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
