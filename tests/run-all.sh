#!/usr/bin/env bash
# Install what the tests need and run them all: Debian's QGIS when missing (for the
# QGIS provider's tests; root or sudo), geoseg with its SAM 3 and test extras, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! /usr/bin/python3 -c "import qgis.core" 2>/dev/null || [ ! -x /usr/bin/qgis_process.bin ]; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q qgis python3-qgis qgis-providers
fi
export HF_HUB_OFFLINE=1  # no test may touch the network
python -m pip install -e ".[sam3,test]"
python -m pytest "$@"
