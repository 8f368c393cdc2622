#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks need, when missing.
# qemu-system-x86 must come from the same (backports) release as the preinstalled newer
# qemu-utils, or apt removes qemu-utils: both are installed together from backports, whose
# source is derived from the machine's own Debian source (no host names here).
set -euo pipefail

need=()
for p in fio libnbd-bin python3-libnbd nbdkit qemu-utils busybox-static; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
need_qemu=0
dpkg -s qemu-system-x86 >/dev/null 2>&1 || need_qemu=1
if [ ${#need[@]} -eq 0 ] && [ $need_qemu -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing packages (${need[*]} $( [ $need_qemu = 1 ] && echo qemu-system-x86)); run as root or install them" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
qemu_target=()
if [ $need_qemu -eq 1 ]; then
  qemu_utils_version=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  if [[ "$qemu_utils_version" == *bpo* ]]; then
    src=/etc/apt/sources.list.d/atlant-backports.sources
    if [ ! -f "$src" ]; then
      base=$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
      uri=$(awk '/^URIs:/{print $2; exit}' "$base" 2>/dev/null || true)
      [ -n "$uri" ] || uri=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
      [ -n "$uri" ] || { echo "install-deps: cannot find the Debian mirror to add ${codename}-backports" >&2; exit 1; }
      printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$uri" "$codename" > "$src"
    fi
    qemu_target=(-t "${codename}-backports")
  fi
fi
echo "install-deps: installing ${need[*]} $( [ $need_qemu = 1 ] && echo qemu-system-x86)"
apt-get update -q >/dev/null
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
if [ $need_qemu -eq 1 ]; then
  apt-get install -y -q "${qemu_target[@]}" qemu-system-x86 qemu-utils qemu-block-extra >/dev/null
fi
