#!/usr/bin/env bash
# The Home Assistant suite on the newest Home Assistant that pytest-homeassistant-custom-component
# offers (see NEWEST below), which needs Python 3.14. `make test` runs it after the suite on the
# minimum (Python 3.13, .venv).
#
#   scripts/ha-newest.sh                 run tests/ha with coverage (>= 95 % in total and per module)
#   scripts/ha-newest.sh ARGS...         run pytest with ARGS instead (e.g. tests/ha/test_init.py -x)
#   scripts/ha-newest.sh --provision     only provision (Python 3.14 and the venv)
#   scripts/ha-newest.sh --lock          resolve the requirements anew and rewrite constraints-ha-newest.txt
#   scripts/ha-newest.sh --clean         remove the cache (what `make clean-env` runs)
#
# Python 3.14 comes from PATH or pyenv when present. Where it is not (Debian 12 has no 3.14 package),
# the script bootstraps a minimal Debian forky root (python3.14 from Debian) into the cache once, and
# runs the tests in it with the repository bind-mounted at the same path (so coverage paths, anvil and
# solc in node_modules are where the host has them) and the host's node binary bind-mounted on PATH.
# All mounts live in a private mount namespace (unshare), so they vanish with the run even when it is
# killed; a trap unmounts them on every exit as well, and the fallback without unshare relies on it.
#
# The venv is cached too: it is rebuilt only when constraints-ha-newest.txt or the requirements below
# change (a stamp holds their hash). The cache is ~/.cache/energykart/ha-newest (XDG_CACHE_HOME is
# honoured; ENERGYKART_HA_NEWEST_CACHE overrides it), outside the work tree: it survives `make test`
# runs and fresh clones (CI clones anew), and `make clean-env` removes it. One run at a time uses it.
set -euo pipefail

NEWEST=(
  pytest-homeassistant-custom-component==0.13.375 # pins homeassistant 2026.10.4
  web3==8.0.0
  safe-pysha3==1.0.7
  coincurve==21.0.0 # oracle/readings.py imports it; built by build_coincurve below
)
# coincurve 21.0.0 has no Python 3.14 wheel, and its sdist does not build as it is: its build hook
# looks for cffi's LICENSE directly in cffi's .dist-info (cffi 2.x has it in .dist-info/licenses/),
# and it downloads libsecp256k1 from GitHub. So the sdist (checked against this hash) is patched and
# built against the system's libsecp256k1 (COINCURVE_IGNORE_SYSTEM_LIB=OFF) into a wheel, kept in the
# cache. eth-keys uses it as on Python 3.13.
COINCURVE_SDIST=coincurve-21.0.0.tar.gz
COINCURVE_SHA256=8b37ce4265a82bebf0e796e21a769e56fdbf8420411ccbe3fafee4ed75b6a6e5
PY_WANT=3.14
SUITE=forky
ROOT_PACKAGES=python3.14,python3.14-venv,python3.14-dev,gcc,ca-certificates
# To build coincurve and safe-pysha3 (no cp314 wheels).
ROOT_EXTRA_PACKAGES=(libsecp256k1-dev pkgconf cmake make)
ROOT_VENV=/opt/energykart-venv
ROOT_WHEELS=/opt/energykart-wheels

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache_base=${XDG_CACHE_HOME:-${HOME:+$HOME/.cache}}
cache=${ENERGYKART_HA_NEWEST_CACHE:-${cache_base:-$repo/.cache}/energykart/ha-newest}
constraints=$repo/constraints-ha-newest.txt
root=$cache/root
self=$repo/scripts/ha-newest.sh
# In parallel (xdist; a module's tests share one worker, so a module fixture is built once), and
# coverage through sys.monitoring (COVERAGE_CORE=sysmon below): the suite waits on anvil and HA's
# loop more than it computes.
default_pytest=(-p no:cacheprovider -n "${ENERGYKART_TEST_WORKERS:-3}" --dist loadscope tests/ha
  --cov=custom_components/energykart --cov-report=term --cov-fail-under=95)

log() { printf 'ha-newest: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}
now() { date +%s; }
since() { echo "$(($(now) - $1)) s"; }

# What the venv is built from: the requirements, the constraints and the Python; a change rebuilds it.
venv_key() {
  {
    printf '%s\n' "${NEWEST[@]}"
    if [ -f "$constraints" ]; then cat "$constraints"; fi
    "$@" -c 'import sys; print(sys.version)'
  } | sha256sum | cut -d' ' -f1
}

# Mount points below the cache, deepest first (none unless a run without unshare was killed hard).
mounts_below() {
  findmnt -rn -o TARGET | awk -v p="$1/" 'index($0, p) == 1' | sort -r
}

unmount_below() {
  local target
  while read -r target; do
    [ -n "$target" ] || continue
    umount -R "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || log "could not unmount $target"
  done < <(mounts_below "$1")
}

clean() {
  [ -e "$cache" ] || return 0
  unmount_below "$cache"
  if [ -n "$(mounts_below "$cache")" ]; then die "still mounted below $cache; not removing it"; fi
  # --one-file-system: never descend into a mount, whatever happens.
  rm -rf --one-file-system "$cache"
  rmdir "$(dirname "$cache")" 2>/dev/null || true
  log "removed $cache"
}

# Python 3.14 on this machine: on PATH, else the newest 3.14.x in pyenv; empty when neither has it.
host_python() {
  if command -v "python$PY_WANT" >/dev/null 2>&1 && "python$PY_WANT" -c 'import sys' >/dev/null 2>&1; then
    command -v "python$PY_WANT"
  elif command -v pyenv >/dev/null 2>&1; then
    local v
    v=$(pyenv versions --bare 2>/dev/null | grep -E "^$PY_WANT(\.[0-9]+)?$" | sort -V | tail -n1 || true)
    if [ -n "$v" ] && [ -x "$(pyenv root)/versions/$v/bin/python$PY_WANT" ]; then
      echo "$(pyenv root)/versions/$v/bin/python$PY_WANT"
    fi
  fi
}

debian_mirror() {
  local m=${ENERGYKART_DEBIAN_MIRROR:-}
  if [ -z "$m" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' /etc/apt/sources.list)
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

# The host's CA bundle and resolver into root $1 (--remove-destination: never write through a link).
copy_host_files() {
  cp --remove-destination /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"
  cp --remove-destination -L /etc/resolv.conf "$1/etc/resolv.conf" 2>/dev/null || true
}

root_key() { printf '%s %s %s\n' "$SUITE" "$ROOT_PACKAGES" "${ROOT_EXTRA_PACKAGES[*]}"; }

# Runs "$@" in a private mount namespace when the kernel allows it, else as it is (then the traps
# unmount; ENERGYKART_NO_UNSHARE=1 forces that, to test it).
can_unshare() { [ -z "${ENERGYKART_NO_UNSHARE:-}" ] && unshare --mount --propagation private true 2>/dev/null; }
in_namespace() {
  if can_unshare; then
    unshare --mount --propagation private -- "$@"
  else
    "$@"
  fi
}

# The Debian forky root with Python 3.14, built once (about 2 minutes) and kept in the cache.
provision_root() {
  if [ -f "$root/.energykart-root" ] && [ "$(cat "$root/.energykart-root")" = "$(root_key)" ]; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "Python $PY_WANT is on neither PATH nor pyenv; provisioning it needs root (debootstrap, chroot)."
  if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "Python $PY_WANT is on neither PATH nor pyenv, and there is no apt-get for debootstrap."
    log "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  local t0 mirror script new=$cache/root.new
  t0=$(now)
  mirror=$(debian_mirror)
  # Old debootstraps have no script for forky: the sid one fits any Debian suite after trixie.
  script=/usr/share/debootstrap/scripts/$SUITE
  [ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
  unmount_below "$new"
  rm -rf --one-file-system "$new"
  mkdir -p "$cache"
  log "debootstrap $SUITE from $mirror into $new (about 2 minutes, once)"
  # In a namespace of its own: the proc and sys that debootstrap mounts vanish even if it is killed.
  in_namespace debootstrap --variant=minbase --include="$ROOT_PACKAGES" "$SUITE" "$new" "$mirror" "$script" \
    >"$cache/debootstrap.log" 2>&1 || {
    tail -n 20 "$cache/debootstrap.log" >&2
    die "debootstrap failed (the whole log: $cache/debootstrap.log)"
  }
  log "debootstrap done in $(since "$t0")"
  # The forky Release file served here has expired; the host trusts certificates the root lacks.
  printf 'Acquire::Check-Valid-Until "false";\n' >"$new/etc/apt/apt.conf.d/99energykart"
  copy_host_files "$new"
  log "installing ${ROOT_EXTRA_PACKAGES[*]} in the root"
  in_namespace "$self" __root-apt "$new" >>"$cache/debootstrap.log" 2>&1 || {
    tail -n 20 "$cache/debootstrap.log" >&2
    die "apt-get in the root failed (the whole log: $cache/debootstrap.log)"
  }
  unmount_below "$new"
  unmount_below "$root"
  rm -rf --one-file-system "$root"
  root_key >"$new/.energykart-root"
  mv "$new" "$root"
  log "root ready in $(since "$t0")"
}

# --- Inside the mount namespace ----------------------------------------------------------------

# Processes whose root is $1: an anvil that pytest started is left running when pytest is killed.
# Only this run uses the root (the lock), so whatever runs in it is this run's.
stop_root_processes() {
  local r p left=()
  r=$(realpath "$1")
  for p in /proc/[0-9]*; do
    if [ "$(readlink "$p/root" 2>/dev/null)" = "$r" ]; then left+=("${p#/proc/}"); fi
  done
  [ ${#left[@]} -gt 0 ] || return 0
  log "stopping what is left running in the root: ${left[*]}"
  kill -TERM "${left[@]}" 2>/dev/null || true
  sleep 2
  kill -KILL "${left[@]}" 2>/dev/null || true
}

mounted=()
mounted_root=""
unmount_all() {
  local i
  if [ -n "$mounted_root" ]; then stop_root_processes "$mounted_root"; fi
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount -R "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null || log "could not unmount ${mounted[i]}"
  done
  mounted=()
}

# mount_in DIR ARGS...: mount into DIR (a path in the root) and remember it for unmount_all.
mount_in() {
  local dir=$1
  shift
  mount "$@" "$dir"
  mounted+=("$dir")
}

# Mounts proc, /dev and a fresh /tmp into root $1; with $2 = full, also the repository and node.
mount_root() {
  local r=$1
  mounted_root=$r
  trap unmount_all EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  mount_in "$r/proc" -t proc proc
  mount_in "$r/dev" --rbind /dev
  mount --make-rslave "$r/dev"
  mount_in "$r/tmp" -t tmpfs -o mode=1777 tmpfs
  [ "${2:-}" = full ] || return 0
  mkdir -p "$r$repo"
  mount_in "$r$repo" --bind "$repo"
  # The tests need node: node_modules/.bin/anvil is a node wrapper around the native binary, and the
  # token tests compile with solcjs. The host's node runs on forky's (newer) libc and libstdc++.
  local node
  node=$(command -v node || true)
  if [ -n "$node" ]; then
    node=$(readlink -f "$node")
    mkdir -p "$r/usr/local/bin"
    [ -e "$r/usr/local/bin/node" ] || : >"$r/usr/local/bin/node"
    mount_in "$r/usr/local/bin/node" --bind -o ro "$node"
  else
    log "no node on PATH: tests that start anvil through node_modules/.bin or compile with solcjs will fail"
  fi
}

# in_root ROOT CMD...: CMD in the root, with a clean environment.
in_root() {
  local r=$1
  shift
  chroot "$r" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" CI="${CI:-}" \
    PATH="$ROOT_VENV/bin:/usr/local/bin:/usr/bin:/bin" PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 ${PIP_INDEX_URL:+PIP_INDEX_URL="$PIP_INDEX_URL"} "$@"
}

root_apt() {
  local r=$1
  mount_root "$r"
  in_root "$r" apt-get -o Acquire::Check-Valid-Until=false update -qq
  in_root "$r" env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false install -y -qq \
    --no-install-recommends "${ROOT_EXTRA_PACKAGES[@]}"
  in_root "$r" apt-get clean
}

# Python that fetches the coincurve sdist from the package index, checks its hash, unpacks and
# patches it, and prints the source folder.
fetch_coincurve() {
  cat <<'EOF'
import hashlib, io, json, os, sys, tarfile, tempfile, urllib.parse, urllib.request
sdist, sha256 = sys.argv[1:3]
name = sdist.split("-")[0]
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/") + f"/{name}/"
accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
with urllib.request.urlopen(urllib.request.Request(index, headers=accept), timeout=120) as answer:
    files = json.load(answer)["files"]
url = urllib.parse.urljoin(index, next(f["url"] for f in files if f["filename"] == sdist))
with urllib.request.urlopen(url, timeout=300) as answer:
    data = answer.read()
if hashlib.sha256(data).hexdigest() != sha256:
    sys.exit(f"{sdist}: sha256 {hashlib.sha256(data).hexdigest()} is not the pinned {sha256}")
work = tempfile.mkdtemp(prefix="coincurve-")
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    tar.extractall(work, filter="data")
src = os.path.join(work, sdist.removesuffix(".tar.gz"))
hook = os.path.join(src, "hatch_build.py")
text = open(hook).read()
old = 'f.parent.name.endswith(".dist-info")'
if old not in text:
    sys.exit(f"{hook}: the line to patch is not there")
new = '(f.parent.name.endswith(".dist-info") or f.parent.parent.name.endswith(".dist-info"))'
open(hook, "w").write(text.replace(old, new))
print(src)
EOF
}

# build_coincurve RUN PYTHON WHEELS HOST_WHEELS: the coincurve wheel in WHEELS, unless it is there.
build_coincurve() {
  local -a run
  read -r -a run <<<"$1"
  local python=$2 wheels=$3 host_wheels=$4 tag src
  tag=$("${run[@]}" "$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  if compgen -G "$host_wheels/${COINCURVE_SDIST%.tar.gz}-$tag-*.whl" >/dev/null; then return 0; fi
  log "building ${COINCURVE_SDIST%.tar.gz} for $tag against the system's libsecp256k1"
  src=$("${run[@]}" "$python" -c "$(fetch_coincurve)" "$COINCURVE_SDIST" "$COINCURVE_SHA256")
  "${run[@]}" env COINCURVE_IGNORE_SYSTEM_LIB=OFF COINCURVE_SECP256K1_STATIC=OFF \
    "$python" -m pip wheel --quiet --no-deps --wheel-dir "$wheels" "$src"
  "${run[@]}" rm -rf "$(dirname "$src")"
}

# provision_venv RUN PYTHON VENV HOST_VENV MODE WHEELS HOST_WHEELS: (re)builds VENV with PYTHON unless
# its stamp matches; RUN is the command prefix that runs a command where VENV lives (nothing on the
# host, in_root ROOT in the root); HOST_VENV is VENV as the host sees it (for the stamp); MODE lock
# resolves anew and rewrites the constraints file; WHEELS (HOST_WHEELS) holds the wheels built here.
provision_venv() {
  local -a run
  read -r -a run <<<"$1"
  local python=$2 venv=$3 host_venv=$4 lock="" wheels=$6 host_wheels=$7 key t0
  if [ "${5:-}" = lock ]; then lock=yes; fi
  key=$(venv_key "${run[@]}" "$python")
  if [ -z "$lock" ] && [ -f "$host_venv/.stamp" ] && [ "$(cat "$host_venv/.stamp")" = "$key" ]; then
    return 0
  fi
  t0=$(now)
  rm -rf --one-file-system "$host_venv"
  log "creating $venv with $("${run[@]}" "$python" -c 'import sys; print(sys.version.split()[0])')"
  "${run[@]}" "$python" -m venv "$venv"
  local -a pins=()
  if [ -z "$lock" ]; then
    [ -f "$constraints" ] || die "$constraints is missing: run scripts/ha-newest.sh --lock"
    # The constraints file is copied into the venv: the root cannot see the host's path otherwise.
    cp "$constraints" "$host_venv/constraints.txt"
    pins=(-c "$venv/constraints.txt")
  fi
  "${run[@]}" "$venv/bin/python" -m pip install --quiet "${pins[@]}" --upgrade pip
  mkdir -p "$host_wheels"
  build_coincurve "$1" "$venv/bin/python" "$wheels" "$host_wheels"
  log "installing ${NEWEST[*]} (2 to 3 minutes)"
  "${run[@]}" "$venv/bin/python" -m pip install --quiet --find-links "$wheels" "${pins[@]}" "${NEWEST[@]}"
  if [ -n "$lock" ]; then
    {
      echo "# Exact versions for the newest Home Assistant leg (scripts/ha-newest.sh), resolved together on"
      echo "# Python $("${run[@]}" "$venv/bin/python" -c 'import sys; print(sys.version.split()[0])') by 'scripts/ha-newest.sh --lock' from: ${NEWEST[*]}"
      "${run[@]}" "$venv/bin/python" -m pip freeze --all --exclude-editable
    } >"$constraints"
    log "wrote $constraints"
    key=$(venv_key "${run[@]}" "$python")
  fi
  echo "$key" >"$host_venv/.stamp"
  log "venv ready in $(since "$t0")"
}

# run_tests RUN PYTHON COVFILE ARGS...: pytest in the repository, then the per-module coverage check.
# COVFILE is where coverage writes its data (as RUN sees it): .coverage in the work tree is the 3.13 leg's.
run_tests() {
  local -a run
  read -r -a run <<<"$1"
  local python=$2 covfile=$3 t0 status=0
  shift 3
  local -a args=("$@")
  local per_module=0
  if [ ${#args[@]} -eq 0 ]; then
    args=("${default_pytest[@]}")
    per_module=1
  fi
  t0=$(now)
  log "pytest ${args[*]} on $("${run[@]}" "$python" -c 'import homeassistant.const as c, sys; print(f"Home Assistant {c.__version__}, Python {sys.version.split()[0]}")')"
  "${run[@]}" env -C "$repo" COVERAGE_FILE="$covfile" COVERAGE_CORE=sysmon "$python" -m pytest "${args[@]}" || status=$?
  log "tests ran in $(since "$t0")"
  if [ "$per_module" = 1 ]; then
    "${run[@]}" env -C "$repo" COVERAGE_FILE="$covfile" "$python" -m coverage json -q -o "$covfile.json" || status=1
    "${run[@]}" "$python" "$repo/scripts/coverage_per_module.py" --label ha-newest "$covfile.json" || status=1
    "${run[@]}" rm -f "$covfile" "$covfile.json"
  fi
  return "$status"
}

inside() {
  local mode=$1
  shift
  unmount_below "$root" # left by a run without unshare that was killed (no trap ran)
  mount_root "$root" full
  copy_host_files "$root"
  provision_venv "in_root $root" "/usr/bin/python$PY_WANT" "$ROOT_VENV" "$root$ROOT_VENV" "$mode" \
    "$ROOT_WHEELS" "$root$ROOT_WHEELS"
  [ "$mode" = test ] || return 0
  local status=0
  run_tests "in_root $root" "$ROOT_VENV/bin/python" /tmp/energykart-ha-newest.coverage "$@" || status=$?
  return "$status"
}

main() {
  case "${1:-}" in
  --clean)
    if [ -d "$cache" ]; then
      exec 9>"$cache/.lock"
      flock 9
    fi
    clean
    return 0
    ;;
  __root-apt)
    root_apt "$2"
    return 0
    ;;
  __inside)
    shift
    inside "$@"
    return
    ;;
  esac
  local mode=test
  case "${1:-}" in
  --provision)
    mode=provision
    shift
    ;;
  --lock)
    mode=lock
    shift
    ;;
  esac
  mkdir -p "$cache"
  # One run at a time per cache: two runs would share (and unmount) each other's mounts.
  exec 9>"$cache/.lock"
  flock 9
  local py
  py=$(host_python)
  if [ -n "$py" ]; then
    log "Python $PY_WANT: $py"
    provision_venv "" "$py" "$cache/venv" "$cache/venv" "$mode" "$cache/wheels" "$cache/wheels"
    [ "$mode" = test ] || return 0
    PATH="$cache/venv/bin:$PATH" run_tests "" "$cache/venv/bin/python" "$cache/coverage" "$@"
    return
  fi
  log "Python $PY_WANT is on neither PATH nor pyenv: using a Debian $SUITE root in $root"
  provision_root
  # exec: one process, so a signal reaches the one that unmounts, and the caller waits for it.
  if can_unshare; then
    exec unshare --mount --propagation private -- "$self" __inside "$mode" "$@"
  fi
  exec "$self" __inside "$mode" "$@"
}

main "$@"
