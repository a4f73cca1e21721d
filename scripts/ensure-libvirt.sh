#!/usr/bin/env bash
# Install libvirt + QEMU from Debian (what is missing), start libvirtd, make sure
# the `default` storage pool and the `nefos-backups` pool (the libvirt driver's
# backups) exist and are active, and build the tiny test VM
# image (scripts/build-vm-image.sh). Used by the test bootstrap; idempotent: safe
# to run every time. Prints the URI (qemu:///system) last.
#
#   scripts/ensure-libvirt.sh                  everything above
#   scripts/ensure-libvirt.sh --build-deps PY  only what building libvirt-python
#                                              for interpreter PY needs (libvirt's
#                                              headers, pkg-config, gcc, Python.h):
#                                              `make install` runs this first
#
# With systemd as PID 1 the daemons are started as its units; without it (a
# container, a CI sandbox) virtlogd and libvirtd run as plain daemons (their pid
# files /run/virtlogd.pid and /run/libvirtd.pid), logging to var/libvirt/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
SUDO=$(command -v sudo || true)
[ "$(id -u)" = 0 ] && SUDO=""
export DEBIAN_FRONTEND=noninteractive

die() { echo "ensure-libvirt: $*" >&2; exit 1; }

APT=($SUDO apt-get -o DPkg::Lock::Timeout=300)
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    "${APT[@]}" update -qq || die "apt-get update failed (needed to install: $*)"
    apt_updated=1
  fi
  "${APT[@]}" install -y -qq --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
}
deb_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# --- build dependencies of libvirt-python (an sdist: it compiles against libvirt) --
build_deps() {
  local py="${1:-python3}" need=()
  pkg-config --exists libvirt 2>/dev/null || need+=(libvirt-dev pkg-config)
  command -v gcc >/dev/null || need+=(gcc)
  if ! "$py" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    need+=(python3-dev)
  fi
  if [ ${#need[@]} -gt 0 ]; then
    echo "Installing ${need[*]} from Debian (to build libvirt-python)..."
    apt_install "${need[@]}"
  fi
}

if [ "${1:-}" = "--build-deps" ]; then
  build_deps "${2:-python3}"
  exit 0
fi

LIBVIRT_DIR="$PWD/var/libvirt"
mkdir -p "$LIBVIRT_DIR"
# One bootstrap at a time (two `make test` runs may race).
exec 9>"$LIBVIRT_DIR/bootstrap.lock"
flock -w 600 9 || die "timed out waiting for another bootstrap holding $LIBVIRT_DIR/bootstrap.lock"

# --- packages -----------------------------------------------------------------
#   libvirt-daemon-system + qemu-system-x86 (+ qemu-utils for qemu-img): the hypervisor;
#   genisoimage: the NoCloud seed images; dnsmasq-base: DHCP on Nefos networks with a
#   cidr (libvirt runs it); linux-image-cloud-amd64 + busybox-static +
#   cpio + kmod: the tiny test VM (scripts/build-vm-image.sh).
need=()
for pkg in libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils genisoimage dnsmasq-base \
  busybox-static cpio kmod; do
  deb_installed "$pkg" || need+=("$pkg")
done
# Any Debian kernel with its modules will do; the cloud flavour is the smallest.
if ! ls /boot/vmlinuz-* >/dev/null 2>&1; then
  need+=(linux-image-cloud-amd64)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing ${need[*]} from Debian..."
  apt_install "${need[@]}"
fi
build_deps "$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)"
command -v virsh >/dev/null || die "virsh is not on PATH after installing libvirt-clients"
[ -x /usr/sbin/libvirtd ] || die "/usr/sbin/libvirtd is missing after installing libvirt-daemon-system"

URI=qemu:///system
virsh_() { timeout 30 virsh -q -c "$URI" "$@"; }
libvirt_answers() { timeout 10 virsh -q -c "$URI" version >/dev/null 2>&1; }

# --- the daemons --------------------------------------------------------------
start_daemon() {  # name: start /usr/sbin/<name> as a daemon unless it runs
  local name=$1 pidfile=/run/$1.pid pid
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
      && [[ "$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline")" == *"$name"* ]]; then
      return 0
    fi
  fi
  echo "Starting $name (log: $LIBVIRT_DIR/$name.log)..."
  # --daemon forks, writes its pid file and detaches; every fd is redirected so it
  # holds no pipe of the caller (make, tee, CI) open, nor the bootstrap lock (fd 9).
  LIBVIRT_LOG_OUTPUTS="3:file:$LIBVIRT_DIR/$name.log" \
    setsid "/usr/sbin/$name" --daemon </dev/null >>"$LIBVIRT_DIR/$name.log" 2>&1 9>&- \
    || die "$name did not start (see $LIBVIRT_DIR/$name.log)"
}

if ! libvirt_answers; then
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl start virtlogd.socket libvirtd.socket libvirtd.service \
      || die "systemctl start libvirtd failed"
  else
    # A libvirtd we started before that no longer answers: stop it, by its pid.
    if [ -f /run/libvirtd.pid ]; then
      old=$(cat /run/libvirtd.pid 2>/dev/null || true)
      if [ -n "$old" ] && [[ "$(tr '\0' ' ' 2>/dev/null < "/proc/$old/cmdline")" == *libvirtd* ]]; then
        echo "libvirtd (pid $old) does not answer: restarting it."
        kill "$old" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$old" 2>/dev/null || true
      fi
      rm -f /run/libvirtd.pid
    fi
    start_daemon virtlogd
    start_daemon libvirtd
  fi
  for _ in $(seq 1 100); do
    libvirt_answers && break
    sleep 0.2
  done
  libvirt_answers || {
    tail -n 20 "$LIBVIRT_DIR/libvirtd.log" >&2 2>/dev/null || true
    die "libvirtd does not answer on $URI (log above: $LIBVIRT_DIR/libvirtd.log)"
  }
else
  # libvirtd answers; it needs virtlogd for every domain's console and QEMU log.
  [ -d /run/systemd/system ] || start_daemon virtlogd
fi

# --- the `default` storage pool -------------------------------------------------
POOL_DIR=/var/lib/libvirt/images
if ! virsh_ pool-info default >/dev/null 2>&1; then
  echo "Defining the storage pool 'default' ($POOL_DIR)..."
  virsh_ pool-define-as default dir --target "$POOL_DIR" >/dev/null \
    || die "could not define the storage pool 'default'"
fi
if [ "$(virsh_ pool-info default | awk '/^State:/ {print $2}')" != running ]; then
  virsh_ pool-build default >/dev/null 2>&1 || true  # makes the directory if missing
  virsh_ pool-start default >/dev/null || die "could not start the storage pool 'default'"
fi
virsh_ pool-autostart default >/dev/null 2>&1 || true

# --- the `nefos-backups` storage pool (where the libvirt driver's backups go) --------
# Beside the default pool's directory, where the driver would define it itself.
default_dir=$(virsh_ pool-dumpxml default | sed -n 's:.*<path>\(.*\)</path>.*:\1:p' | head -n 1)
BACKUP_DIR="$(dirname "${default_dir:-$POOL_DIR}")/nefos-backups"
if ! virsh_ pool-info nefos-backups >/dev/null 2>&1; then
  echo "Defining the storage pool 'nefos-backups' ($BACKUP_DIR)..."
  virsh_ pool-define-as nefos-backups dir --target "$BACKUP_DIR" >/dev/null \
    || die "could not define the storage pool 'nefos-backups'"
fi
if [ "$(virsh_ pool-info nefos-backups | awk '/^State:/ {print $2}')" != running ]; then
  virsh_ pool-build nefos-backups >/dev/null 2>&1 || true
  virsh_ pool-start nefos-backups >/dev/null || die "could not start the storage pool 'nefos-backups'"
fi
virsh_ pool-autostart nefos-backups >/dev/null 2>&1 || true

# --- the tiny test VM image ---------------------------------------------------
scripts/build-vm-image.sh >/dev/null || die "building the VM image (scripts/build-vm-image.sh) failed"

echo "libvirt $(virsh_ version | awk '/Using library/ {print $NF}'), QEMU $(virsh_ version | awk '/Running hypervisor/ {print $NF}') on $URI: ready"
echo "$URI"
