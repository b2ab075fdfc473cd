#!/usr/bin/env bash
# Drive image generation through Open WebUI's own REST API against a local tiny opea-media
# text2image service: once with Open WebUI's `openai` engine, once with its `automatic1111` one.
#
#   scripts/try-open-webui.sh            # from the repository root, opea-media installed
#
# Heavy (Open WebUI and its dependencies are several GB): not part of CI. Open WebUI gets a venv
# of its own (.cache/open-webui-venv, reused); torch is installed into it first, pinned, so pip
# does not pull a CUDA build. Everything listens on 127.0.0.1 only; Open WebUI runs offline.
# Exit status 0 when both engines produced an image; the log of each server is in the work
# folder it prints.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${OPEN_WEBUI_VENV:-$ROOT/.cache/open-webui-venv}
TORCH_VERSION=${OPEN_WEBUI_TORCH_VERSION:-2.13.0}
OPEN_WEBUI_SPEC=${OPEN_WEBUI_SPEC:-open-webui}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/try-open-webui.XXXXXX")
PYTHON=${PYTHON:-python3}
OPEA_MEDIA=${OPEA_MEDIA:-$(command -v opea-media || echo "$ROOT/.venv/bin/opea-media")}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # wait_for URL SECONDS NAME
  local deadline=$((SECONDS + $2))
  until curl -fs -o /dev/null "$1"; do
    if ((SECONDS > deadline)); then
      echo "$3 did not answer $1 within $2 s; its log: $WORK/$3.log" >&2
      tail -n 40 "$WORK/$3.log" >&2 || true
      exit 1
    fi
    sleep 2
  done
}

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== work folder: $WORK"
if [[ ! -x "$VENV/bin/open-webui" ]]; then
  echo "== installing Open WebUI into $VENV (torch $TORCH_VERSION first)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
  "$VENV/bin/pip" install -q "$OPEN_WEBUI_SPEC"
fi
"$VENV/bin/pip" show open-webui | sed -n 's/^Version: /== Open WebUI /p'

SD_PORT=$(free_port)
echo "== opea-media serve --model tiny on 127.0.0.1:$SD_PORT"
"$OPEA_MEDIA" serve --service text2image --model tiny --device cpu --host 127.0.0.1 --port "$SD_PORT" \
  --output-dir "$WORK/outputs" --log-level info >"$WORK/opea-media.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$SD_PORT/health" 300 opea-media

UI_PORT=$(free_port)
echo "== open-webui serve on 127.0.0.1:$UI_PORT"
(
  cd "$WORK"
  # Offline: no model downloads, no update checks; the first account becomes the admin.
  env DATA_DIR="$WORK/open-webui-data" WEBUI_SECRET_KEY=try-open-webui HF_HUB_OFFLINE=1 OFFLINE_MODE=true \
    ENABLE_OLLAMA_API=false ENABLE_OPENAI_API=false RAG_EMBEDDING_MODEL_AUTO_UPDATE=false \
    ENABLE_IMAGE_GENERATION=true IMAGE_GENERATION_ENGINE=openai IMAGE_GENERATION_MODEL=tiny \
    IMAGES_OPENAI_API_BASE_URL="http://127.0.0.1:$SD_PORT/v1" IMAGES_OPENAI_API_KEY=unused \
    AUTOMATIC1111_BASE_URL="http://127.0.0.1:$SD_PORT" IMAGE_SIZE=64x64 IMAGE_STEPS=2 \
    "$VENV/bin/open-webui" serve --host 127.0.0.1 --port "$UI_PORT"
) >"$WORK/open-webui.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$UI_PORT/health" 600 open-webui

"$PYTHON" - "$UI_PORT" "$SD_PORT" <<'EOF'
"""Sign up the admin, then generate one image with each engine through Open WebUI's API."""
import json
import sys
import urllib.error
import urllib.request

ui, sd = (f"http://127.0.0.1:{port}" for port in sys.argv[1:3])


def call(method, path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(ui + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            raw = response.read()
            return response.status, raw if path.endswith("/content") else json.loads(raw or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


status, account = call("POST", "/api/v1/auths/signup", {"name": "admin", "email": "admin@example.com", "password": "pw"})
assert status == 200, (status, account)
token = account["token"]
status, config = call("GET", "/api/v1/images/config", token=token)
assert status == 200, (status, config)
failures = 0
for engine in ("openai", "automatic1111"):
    config = {**config, "ENABLE_IMAGE_GENERATION": True, "IMAGE_GENERATION_ENGINE": engine}
    config |= {"IMAGE_GENERATION_MODEL": "tiny", "IMAGE_SIZE": "64x64", "IMAGE_STEPS": 2}
    status, updated = call("POST", "/api/v1/images/config/update", config, token)
    if status != 200:
        print(f"{engine}: the config update failed: {status} {updated}")
        failures += 1
        continue
    config = updated if isinstance(updated, dict) else config
    status, images = call("POST", "/api/v1/images/generations", {"prompt": "a red fox", "n": 1}, token)
    if status != 200 or not images:
        print(f"{engine}: generation failed: {status} {images}")
        failures += 1
        continue
    url = images[0]["url"]
    status, content = call("GET", url, token=token)
    ok = status == 200 and content[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"{engine}: Open WebUI stored {url} ({len(content)} bytes, {'a PNG' if ok else 'NOT a PNG'})")
    failures += not ok
sys.exit(1 if failures else 0)
EOF
echo "== done; what opea-media saw:"
grep -o '"message": "[A-Z]* /[^"]*' "$WORK/opea-media.log" | sort | uniq -c
