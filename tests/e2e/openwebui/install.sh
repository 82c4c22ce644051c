#!/usr/bin/env bash
# Installs what the Open WebUI browser suite needs, from nothing, and is quick when it is all there:
# Open WebUI (pinned) in its own venv, never the project's; Debian's Chromium. Playwright, which drives
# Chromium, is in the project's dev group. The venv's path is OPENWEBUI_HOME (the suite reads it too).
set -euo pipefail

OPENWEBUI_VERSION=0.12.4   # the suite's task prompts and page selectors are checked against this one
TORCH_VERSION=2.13.0       # CPU build: installed first, or Open WebUI's deps pull a multi-GB CUDA torch
home="${OPENWEBUI_HOME:-${TMPDIR:-/tmp}/letta-proxy-openwebui}"
venv="$home/venv"

if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("open-webui"))' 2>/dev/null)" \
     != "$OPENWEBUI_VERSION" ]; then
  mkdir -p "$home"
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install -q "torch==$TORCH_VERSION"
  "$venv/bin/pip" install -q "open-webui==$OPENWEBUI_VERSION"
fi
echo "Open WebUI $OPENWEBUI_VERSION in $venv; $(chromium --version)"
