#!/usr/bin/env bash
# Install what the tests need and run them all: Debian's QGIS and Chromium when missing (for the
# QGIS provider's and the explorer's browser tests; root or sudo), a virtual environment .venv unless one is active,
# geoseg with its SAM 3 and test extras, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! /usr/bin/python3 -c "import qgis.core" 2>/dev/null || [ ! -x /usr/bin/qgis_process.bin ]; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q qgis python3-qgis qgis-providers
fi
if [ ! -x /usr/bin/chromium ]; then  # the explorer's browser tests: Debian's Chromium, driven by Playwright
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
if [ -z "${VIRTUAL_ENV:-}" ] && ! python3 -c "import ensurepip" 2>/dev/null && command -v apt-get >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)  # Debian's python3 makes venvs only with python3-venv
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q python3-venv
fi
if [ -z "${VIRTUAL_ENV:-}" ]; then  # never pip into the system Python (refused on Debian 12)
    [ -x .venv/bin/python ] || python3 -m venv .venv
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
export HF_HUB_OFFLINE=1  # no test may touch the network
python -m pip install -e ".[sam3,test]"
# two processes, each file's tests in one of them (module fixtures built once); GEOSEG_TEST_WORKERS=0: one process
python -m pytest -n "${GEOSEG_TEST_WORKERS:-2}" --dist loadfile "$@"
