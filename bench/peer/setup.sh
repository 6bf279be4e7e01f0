#!/bin/sh
# Installs the Python peer of bench/benches/peer.rs (bench/peer/requirements.txt, pinned) into a venv:
#   sh bench/peer/setup.sh            # ~/.cache/msk-sync-peer-venv, or $MSK_SYNC_PEER_VENV
# The benchmark runs $MSK_SYNC_PEER_VENV/bin/python (default ~/.cache/msk-sync-peer-venv/bin/python).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${MSK_SYNC_PEER_VENV:-$HOME/.cache/msk-sync-peer-venv}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$venv/bin/python" -c 'import aws_lambda_powertools, sqlalchemy, psycopg, pymysql; print("peer venv ready:", sqlalchemy.__version__)'
