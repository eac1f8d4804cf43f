#!/usr/bin/env bash
# Make this checkout ready to run: a virtual environment in .venv with mambazoo installed
# (editable, with the test extra, exact pins from constraints.txt) and the offline data packages.
# Safe to run again: it skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_PACKAGES=(dataset-fashion-mnist)
missing=()
for pkg in "${DATA_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing data packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || { echo "[setup] creating .venv"; "$PYTHON" -m venv .venv; }
stamp=.venv/.mambazoo-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing mambazoo and its pinned dependencies into .venv (about 2 minutes)"
  log=.venv/pip-install.log
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]' >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2
    echo "[setup] pip install failed (full log: $log)" >&2
    exit 1
  fi
  .venv/bin/python -c "import mambazoo, timm, mmengine, torchvision, torchaudio"
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, timm; print(f"torch {torch.__version__}, timm {timm.__version__}")')"
