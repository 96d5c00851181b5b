#!/usr/bin/env bash
# Install gossipd as a systemd service.
#
#   scripts/install.sh                       venv /opt/gossipd/venv, config /etc/gossipd, units
#   scripts/install.sh --gpu                 also the `cuda` extra and the GPU drop-in
#   scripts/install.sh --instance n1:4002    also /etc/gossipd/n1.toml + n1.key for gossipd@n1
#   scripts/install.sh --root "$(mktemp -d)" --dry-run     show every action, change nothing
#
# Rules:
# - A user's files are never overwritten: an existing config or key is kept (and said so). An
#   existing venv is reused and gossipd upgraded in it.
# - Node keys live in /etc/gossipd (0600 root) and reach the service with LoadCredential=. A key
#   left in the old place (<state_dir>/identity.key) is copied, so the node keeps its peer ID.
# - With --root DIR everything goes under DIR and nothing outside it is touched: the system
#   commands (systemd-sysusers, systemd-tmpfiles, systemctl) are printed, never run. The venv's
#   scripts then point into DIR/PREFIX, so that layout runs where it was made (tests, inspection).
# - --dry-run prints each action (`+ ...`) and performs none.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: install.sh [options]
  --prefix DIR        install prefix; the venv goes to DIR/venv (default /opt/gossipd)
  --root DIR          lay everything out under DIR instead of / (runs no system commands)
  --dry-run           print each action without doing it
  --python PY         interpreter for the venv (default python3; needs 3.11+)
  --from DIR          gossipd source tree (default: the tree this script is in)
  --deps-from VENV    reuse the dependencies installed in VENV (same Python version) instead of
                      downloading them; only gossipd itself is built and installed (tests,
                      offline; with --gpu, VENV must hold the CUDA build of jax)
  --gpu               install the `cuda` extra and the GPU drop-in (PrivateDevices=no)
  --instance NAME:PORT  also write /etc/gossipd/NAME.toml (listening on PORT) and NAME.key for
                      gossipd@NAME.service; may be repeated
  -h, --help          this text
EOF
}

die() { echo "install.sh: $*" >&2; exit 2; }

PREFIX=/opt/gossipd
ROOT=
DRY=false
PY=python3
FROM=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPS_FROM=
GPU=false
INSTANCES=()

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
        --dry-run) DRY=true; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PY=$2; shift 2 ;;
        --from) [ $# -ge 2 ] || die "--from needs a directory"; FROM=$2; shift 2 ;;
        --deps-from) [ $# -ge 2 ] || die "--deps-from needs a venv"; DEPS_FROM=$2; shift 2 ;;
        --gpu) GPU=true; shift ;;
        --instance) [ $# -ge 2 ] || die "--instance needs NAME:PORT"; INSTANCES+=("$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path, got '$PREFIX'" ;; esac
PREFIX=${PREFIX%/}
if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT is not a directory"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=
fi
if [ -n "$DEPS_FROM" ]; then
    [ -d "$DEPS_FROM" ] || die "--deps-from $DEPS_FROM is not a directory"
    DEPS_FROM=$(cd "$DEPS_FROM" && pwd)
fi
[ -f "$FROM/pyproject.toml" ] || die "--from $FROM is not a gossipd source tree (no pyproject.toml)"
FROM=$(cd "$FROM" && pwd)
for spec in ${INSTANCES[@]+"${INSTANCES[@]}"}; do
    [[ "$spec" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*:[0-9]{1,5}$ ]] \
        || die "--instance wants NAME:PORT (NAME of letters, digits, _ . -), got '$spec'"
    [ "${spec%%:*}" != gossipd ] || die "--instance name 'gossipd' is the single node's config"
    port=$((10#${spec##*:}))
    [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "--instance $spec: port must be 1-65535"
done

VENV=$ROOT$PREFIX/venv
ETC=$ROOT/etc/gossipd
UNITS=$ROOT/etc/systemd/system
SYSUSERS=$ROOT/usr/lib/sysusers.d
TMPFILES=$ROOT/usr/lib/tmpfiles.d
STATE=$ROOT/var/lib/gossipd

# Every change goes through run (or a helper built on it), so --dry-run shows all of them.
run() {
    echo "+ $*"
    if ! $DRY; then "$@"; fi
}

# write SRC DEST MODE [sed expressions...]: a file from the source tree, with edits applied.
write() {
    local src=$1 dest=$2 mode=$3
    shift 3
    echo "+ install -m $mode $src $dest${*:+ (with sed $*)}"
    if ! $DRY; then
        local tmp
        tmp=$(mktemp "$dest.XXXXXX")
        if [ $# -gt 0 ]; then
            local args=()
            for e in "$@"; do args+=(-e "$e"); done
            sed "${args[@]}" "$src" > "$tmp"
        else
            cat "$src" > "$tmp"
        fi
        chmod "$mode" "$tmp"
        mv -f "$tmp" "$dest"
    fi
}

# keep_or_write SRC DEST MODE [sed...]: as write, but an existing DEST is the user's and stays.
keep_or_write() {
    if [ -e "$2" ]; then
        echo "  keeping existing $2"
    else
        write "$@"
    fi
}

# new_key KEY OLD: KEY is a node key; copy OLD (a key from an earlier install) or make a new one.
new_key() {
    local key=$1 old=$2
    if [ -e "$key" ]; then
        echo "  keeping existing $key"
    elif [ -e "$old" ]; then
        run install -m 0600 "$old" "$key"
        echo "  $key: copied from $old, so the node keeps its peer ID"
    elif $DRY; then
        echo "+ $VENV/bin/gossipd --new-key $key"
    else
        echo "+ $VENV/bin/gossipd --new-key $key"
        echo "  $key: new node, peer ID $("$VENV/bin/gossipd" --new-key "$key")"
    fi
}

echo "gossipd from $FROM into ${ROOT:-/} (prefix $PREFIX)"
$DRY && echo "dry run: nothing is changed"

# 1. The venv and gossipd in it.
if [ -x "$VENV/bin/python" ]; then
    echo "  reusing the venv $VENV"
else
    run mkdir -p "$(dirname "$VENV")"
    run "$PY" -m venv "$VENV"
fi
PIP=(run "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet)
if [ -n "$DEPS_FROM" ]; then
    [ -x "$DEPS_FROM/bin/python" ] || die "--deps-from $DEPS_FROM is not a venv (no bin/python)"
    # The packages' compiled parts are built for one Python version: refuse a mismatch.
    want=$("$DEPS_FROM/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$want" = "$have" ] || die "--deps-from has Python $want, --python is $have"
    dirs=$("$DEPS_FROM/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib")); print(sysconfig.get_path("platlib"))' | sort -u)
    pth=$VENV/lib/python$have/site-packages/_gossipd_deps.pth
    echo "+ write $pth ($(echo "$dirs" | tr '\n' ' '))"
    $DRY || printf '%s\n' "$dirs" > "$pth"
    "${PIP[@]}" --no-deps "$FROM"
else
    extra=
    $GPU && extra='[cuda]'
    "${PIP[@]}" -c "$FROM/constraints.txt" "$FROM$extra"
fi

# 2. Units, the GPU drop-in, sysusers.d and tmpfiles.d.
run mkdir -p "$UNITS" "$SYSUSERS" "$TMPFILES"
edits=()
[ "$PREFIX" = /opt/gossipd ] || edits=("s|/opt/gossipd/venv/|$PREFIX/venv/|g")
for unit in gossipd.service gossipd@.service; do
    write "$FROM/systemd/$unit" "$UNITS/$unit" 0644 ${edits[@]+"${edits[@]}"}
    if $GPU; then
        run mkdir -p "$UNITS/$unit.d"
        write "$FROM/systemd/gossipd-gpu.conf" "$UNITS/$unit.d/gpu.conf" 0644
    fi
done
write "$FROM/systemd/sysusers.d/gossipd.conf" "$SYSUSERS/gossipd.conf" 0644
write "$FROM/systemd/tmpfiles.d/gossipd.conf" "$TMPFILES/gossipd.conf" 0644

# 3. Config and keys: /etc/gossipd is 0750 root:gossipd (tmpfiles.d), configs 0640, keys 0600.
run mkdir -p "$ETC"
run chmod 0750 "$ETC"
keep_or_write "$FROM/systemd/gossipd.toml" "$ETC/gossipd.toml" 0640
new_key "$ETC/identity.key" "$STATE/identity.key"
configs=("$ETC/gossipd.toml")
for spec in ${INSTANCES[@]+"${INSTANCES[@]}"}; do
    name=${spec%%:*}
    port=$((10#${spec##*:}))
    keep_or_write "$FROM/systemd/gossipd.toml" "$ETC/$name.toml" 0640 \
        "s|^state_dir = \"/var/lib/gossipd\"|state_dir = \"/var/lib/gossipd/$name\"|" \
        "s|^control_socket = \"/run/gossipd/control.sock\"|control_socket = \"/run/gossipd/$name/control.sock\"|" \
        "s|/tcp/4001\"|/tcp/$port\"|" \
        "1s|^.*\$|# /etc/gossipd/$name.toml: node $name of this host (gossipd@$name.service).|"
    new_key "$ETC/$name.key" "$STATE/$name/identity.key"
    configs+=("$ETC/$name.toml")
done

# 4. System steps: done here on a live install, only printed for another root.
steps=(
    "systemd-sysusers /usr/lib/sysusers.d/gossipd.conf"
    "systemd-tmpfiles --create /usr/lib/tmpfiles.d/gossipd.conf"
    "chgrp gossipd ${configs[*]#"$ROOT"}"
    "systemctl daemon-reload"
)
if [ -z "$ROOT" ]; then
    run systemd-sysusers /usr/lib/sysusers.d/gossipd.conf
    run systemd-tmpfiles --create /usr/lib/tmpfiles.d/gossipd.conf
    run chgrp gossipd "${configs[@]}"
    run systemctl daemon-reload
    echo
    echo "next steps:"
else
    echo
    echo "next steps on the machine that boots $ROOT:"
    for s in "${steps[@]}"; do echo "  $s"; done
fi
echo "  edit /etc/gossipd/gossipd.toml (swarm members or secret, bootstrap peers)"
echo "  gossipd --config /etc/gossipd/gossipd.toml --check"
echo "  systemctl enable --now gossipd"
for spec in ${INSTANCES[@]+"${INSTANCES[@]}"}; do
    echo "  systemctl enable --now gossipd@${spec%%:*}     # config /etc/gossipd/${spec%%:*}.toml"
done
echo "  systemctl status gossipd; gossipctl status (as root or a member of group gossipd)"
