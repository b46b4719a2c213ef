#!/usr/bin/env bash
# Idempotent set-up of a development / CI machine: Debian's Chromium for the browser tests, a
# virtualenv with the pinned runtime and development requirements (the Docker image installs only
# requirements.txt). Re-running it does nothing once everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

# The emoji font: without it headless Chromium draws the annotate page's thumbs as empty boxes.
EMOJI_FONT=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
if { [ ! -x /usr/bin/chromium ] || [ ! -f "$EMOJI_FONT" ]; } && [ "${PROSPECT_SKIP_APT:-0}" != "1" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's chromium and emoji font for the browser tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null
  else
    echo "setup: /usr/bin/chromium is missing; install Debian's 'chromium' package for the browser tests" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
