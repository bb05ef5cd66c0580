#!/usr/bin/env bash
# Install Debian packages at the exact versions the lock names, from the pinned snapshot archive.
# Used by the base and the final stage, so both read packages from the same sources the same way.
# Needs DEBIAN_ARCHIVE, DEBIAN_SECURITY_ARCHIVE and DEBIAN_SUITE in the environment (build args).
# With APT_PRINT_CANDIDATES=1 it installs nothing and prints `name=version` of what it would install
# (the tests ask the live mirror this way; the product installs the lock's versions).
set -euo pipefail
umask 022
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
printf 'deb [check-valid-until=no] %s %s main\n' \
  "${DEBIAN_ARCHIVE}" "${DEBIAN_SUITE}" "${DEBIAN_ARCHIVE}" "${DEBIAN_SUITE}-updates" \
  "${DEBIAN_SECURITY_ARCHIVE}" "${DEBIAN_SUITE}-security" > /etc/apt/sources.list
apt-get update -q >&2
if [ -n "${APT_PRINT_CANDIDATES:-}" ]; then
  for name in "$@"; do
    printf '%s=%s\n' "${name}" "$(apt-cache policy "${name}" | awk '$1 == "Candidate:" {print $2}')"
  done
  exit 0
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/* /var/cache/ldconfig/aux-cache
