#!/usr/bin/env bash
# Installs edge-agent as a systemd service on Raspberry Pi OS (or any Debian-based board OS).
#
#   sudo install/install-raspberry-pi-os.sh --wheel edge_agent-0.1.0-cp311-cp311-linux_aarch64.whl
#   sudo install/install-raspberry-pi-os.sh --from-source /home/pi/edge-agent
#
# Options:
#   --wheel PATH        install this wheel (built on a PC with cross/build-wheel.sh)
#   --from-source DIR   build and install from a checkout (needs a compiler; slower)
#   --board NAME        board profile (default: detected from /proc/device-tree/model;
#                       `edge-agent boards` lists them)
#   --prefix DIR        virtual environment to install into (default: /opt/edge-agent)
#   --no-start          install and enable, but do not (re)start the service
#
# Idempotent: running it again upgrades the package and keeps /etc/edge-agent/agent.json
# (only its edge_agent_board is changed, and only when --board is given). docs/INSTALL.md
# explains each step.
set -euo pipefail

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

WHEEL="" SOURCE="" BOARD="" PREFIX="/opt/edge-agent" START=1
while [ $# -gt 0 ]; do
    case "$1" in
        --wheel) WHEEL="${2:?--wheel needs a path}"; shift 2 ;;
        --from-source) SOURCE="${2:?--from-source needs a directory}"; shift 2 ;;
        --board) BOARD="${2:?--board needs a name}"; shift 2 ;;
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
        --no-start) START=0; shift ;;
        -h|--help) usage ;;
        *) echo "install: unknown argument $1" >&2; usage ;;
    esac
done
if { [ -n "$WHEEL" ] && [ -n "$SOURCE" ]; } || [ -z "$WHEEL$SOURCE" ]; then
    echo "install: give exactly one of --wheel PATH and --from-source DIR" >&2
    usage
fi
if [ -n "$WHEEL" ] && [ ! -f "$WHEEL" ]; then
    echo "install: no wheel at $WHEEL" >&2; exit 2
fi
if [ -n "$SOURCE" ] && [ ! -f "$SOURCE/setup.py" ]; then
    echo "install: $SOURCE is not an edge-agent checkout (no setup.py)" >&2; exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install: run as root (sudo)" >&2; exit 1
fi

HERE="$(cd "$(dirname "$0")" && pwd)"
ETC=/etc/edge-agent
step() { echo "==> $*"; }

step "system packages"
packages=(python3-venv)
[ -n "$SOURCE" ] && packages+=(build-essential python3-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

step "user and group edge-agent"
getent group edge-agent >/dev/null || groupadd --system edge-agent
id -u edge-agent >/dev/null 2>&1 || useradd --system --gid edge-agent --home-dir /var/lib/edge-agent \
    --no-create-home --shell /usr/sbin/nologin edge-agent
# The Edge TPU: on USB its udev rule gives the device to plugdev, on PCIe to apex.
for group in plugdev apex; do
    if getent group "$group" >/dev/null; then usermod -a -G "$group" edge-agent; fi
done

step "edge-agent into $PREFIX"
[ -x "$PREFIX/bin/python" ] || python3 -m venv "$PREFIX"
"$PREFIX/bin/python" -m pip install --quiet --upgrade pip
if [ -n "$WHEEL" ]; then
    "$PREFIX/bin/python" -m pip install --quiet "$WHEEL"  # with its dependencies, from PyPI
    # A rebuilt wheel of the same version replaces the installed one.
    "$PREFIX/bin/python" -m pip install --quiet --force-reinstall --no-deps "$WHEEL"
else
    "$PREFIX/bin/python" -m pip install --quiet --upgrade "$SOURCE"
fi

step "board profile"
BOARD_GIVEN="$BOARD"
if [ -z "$BOARD" ]; then
    BOARD="$("$PREFIX/bin/python" -c 'from edge_agent.platform import boards, machine
p = boards.detect()
generic = "generic-" + machine.machine_architecture()
print(p.name if p else (generic if generic in boards.names() else ""))')"
    if [ -z "$BOARD" ]; then
        echo "install: no board profile matches $(tr -d '\0' </proc/device-tree/model 2>/dev/null || uname -m);" \
             "give one with --board NAME ($("$PREFIX/bin/edge-agent" boards | awk 'NR>1 && !/^\*/ {print $1}' | paste -sd' '))" >&2
        exit 2
    fi
fi
"$PREFIX/bin/python" -c 'import sys; from edge_agent.platform import boards; boards.load_profile(sys.argv[1])' "$BOARD"
echo "    $BOARD"

step "configuration in $ETC"
install -d -o root -g root -m 0755 "$ETC"
# The trust store: root-owned and not writable by others, as the agent requires.
install -d -o root -g root -m 0755 "$ETC/trusted-keys"
# The model repository: root writes packages in (write elsewhere on /var/lib, then mv), the
# agent only reads (docs/MODEL_LIFECYCLE.md); others may not write it, as the agent requires.
install -d -o root -g edge-agent -m 0750 /var/lib/edge-agent-models
if [ ! -f "$ETC/agent.json" ]; then
    # The board: its profile gives the paths the unit uses (socket in /run/edge-agent,
    # state in /var/lib/edge-agent, keys in /etc/edge-agent/trusted-keys). Add your keys
    # there; the models in /var/lib/edge-agent-models/<name>/ are served at once.
    printf '{\n  "edge_agent_board": "%s",\n  "edge_agent_model_repository": "/var/lib/edge-agent-models"\n}\n' \
        "$BOARD" >"$ETC/agent.json"
elif [ -n "$BOARD_GIVEN" ]; then
    "$PREFIX/bin/python" - "$ETC/agent.json" "$BOARD" <<'PY'
import json, sys
path, board = sys.argv[1], sys.argv[2]
with open(path) as f:
    values = json.load(f)
if values.get("edge_agent_board") != board:
    values["edge_agent_board"] = board
    with open(path, "w") as f:
        json.dump(values, f, indent=2)
        f.write("\n")
PY
fi
# It may hold S3 credentials: readable by the agent's group, not by everyone.
chown root:edge-agent "$ETC/agent.json"
chmod 0640 "$ETC/agent.json"
"$PREFIX/bin/python" -c 'import sys; from edge_agent.platform import boards; boards.load(sys.argv[1])' "$ETC/agent.json"

step "systemd unit"
sed "s#/opt/edge-agent/#$PREFIX/#g" "$HERE/edge-agent.service" >/etc/systemd/system/edge-agent.service
chmod 0644 /etc/systemd/system/edge-agent.service
if [ -f "$HERE/../docs/INSTALL.md" ]; then
    install -D -m 0644 "$HERE/../docs/INSTALL.md" "$PREFIX/share/doc/edge-agent/INSTALL.md"
fi
# Clients find the socket without --socket.
echo "export EDGE_AGENT_SOCKET=/run/edge-agent/agent.sock" >/etc/profile.d/edge-agent.sh
systemctl daemon-reload
systemctl enable edge-agent.service
if [ "$START" -eq 1 ]; then
    systemctl restart edge-agent.service
    systemctl --no-pager status edge-agent.service | head -n 5 || true
fi
echo "edge-agent is installed. Clients join the group: sudo usermod -a -G edge-agent \$USER"
