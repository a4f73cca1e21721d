#!/usr/bin/env bash
# Build the tiny bootable VM image the libvirt tests boot, offline, from Debian
# packages already on this machine (scripts/ensure-libvirt.sh installs them):
#
#   var/images/nefos-tiny/vmlinuz     the kernel of the installed linux-image package
#   var/images/nefos-tiny/initrd.img  a busybox initramfs (below)
#   var/images/nefos-tiny/cmdline     the kernel command line it wants
#   var/images/nefos-tiny/manifest    kernel version and checksums
#
# The guest (busybox init as PID 1, /etc/init.d/rcS its whole boot) prints on
# the serial console, in this order:
#   NEFOS-BOOT <uptime>            first line of its init
#   NEFOS-SEED <device>|none       the NoCloud seed (a disk labelled `cidata`), mounted
#   NEFOS-SSH-KEYS-BEGIN / -END    around the public-keys of the seed's meta-data
#   NEFOS-USER-DATA-BEGIN / -END   around the seed's user-data
#   NEFOS-READY                    booted; a user-data starting `#!` then runs,
#                                  its output on the console
# It brings its network interfaces up (udhcpc), answers the ACPI power button
# (busybox acpid -> poweroff) and prints NEFOS-POWEROFF while shutting down. A root
# shell runs on the serial console (ttyS0), for the interactive console.
# The virtio (pci, blk, net, balloon), isofs, ACPI button and evdev modules of the
# kernel are copied in with their dependencies and loaded by insmod.
#
# Idempotent: rebuilds only when the kernel or this script changed. Prints the
# image directory last. NEFOS_VM_KERNEL=<version> picks another installed kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "build-vm-image: $*" >&2; exit 1; }

OUT="$PWD/var/images/nefos-tiny"
MODULES=(virtio_pci virtio_blk virtio_net virtio_balloon isofs button evdev)

KVER="${NEFOS_VM_KERNEL:-}"
if [ -z "$KVER" ]; then
  # The newest kernel that has both its image and its modules installed.
  for k in $(ls /boot/vmlinuz-* 2>/dev/null | sed 's|/boot/vmlinuz-||' | sort -rV); do
    if [ -f "/lib/modules/$k/modules.dep" ]; then KVER="$k"; break; fi
  done
fi
[ -n "$KVER" ] || die "no kernel in /boot with modules in /lib/modules: install linux-image-cloud-amd64 (scripts/ensure-libvirt.sh does)"
KERNEL="/boot/vmlinuz-$KVER"
[ -r "$KERNEL" ] || die "$KERNEL is missing or unreadable"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] && dpkg -S "$BUSYBOX" 2>/dev/null | grep -q busybox-static \
  || die "$BUSYBOX is not Debian's static busybox: install busybox-static"
command -v cpio >/dev/null || die "cpio is missing: install cpio"

# The fingerprint of the inputs: the kernel, busybox and this script.
STAMP="$(sha256sum "$KERNEL" "$BUSYBOX" "$0" | sha256sum | cut -d' ' -f1)"
if [ -f "$OUT/manifest" ] && grep -qx "inputs=$STAMP" "$OUT/manifest" \
  && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ]; then
  echo "$OUT"
  exit 0
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,dev,etc/init.d,etc/acpi/PWRF,lib/modules,mnt/seed,proc,root,run,sys,tmp,www}
ln -s bin "$ROOT/sbin"
mkdir -p "$ROOT/usr"
ln -s ../bin "$ROOT/usr/bin"
ln -s ../bin "$ROOT/usr/sbin"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"
done
# The kernel runs /init: busybox's init, which reads /etc/inittab.
ln -s bin/busybox "$ROOT/init"

# Modules, in load order (dependencies first), each once.
: > "$ROOT/etc/modules.order"
for mod in "${MODULES[@]}"; do
  while read -r kind path _; do
    [ "$kind" = insmod ] || continue   # "builtin <name>": in the kernel already
    rel="${path#/lib/modules/}"
    grep -qxF "$rel" "$ROOT/etc/modules.order" && continue
    mkdir -p "$ROOT/lib/modules/$(dirname "$rel")"
    cp "$path" "$ROOT/lib/modules/$rel"
    echo "$rel" >> "$ROOT/etc/modules.order"
  done < <(modprobe -S "$KVER" --show-depends "$mod" 2>/dev/null || die "module $mod is not in kernel $KVER")
done

cat > "$ROOT/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
# A root shell on the serial console (the interactive console of the tests).
ttyS0::respawn:-/bin/sh
EOF

cat > "$ROOT/etc/init.d/rcS" <<'EOF'
#!/bin/sh
# The whole boot of the tiny Nefos guest (scripts/build-vm-image.sh).
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
echo "NEFOS-BOOT $(cut -d' ' -f1 /proc/uptime)"
while read -r mod; do insmod "/lib/modules/$mod" 2>/dev/null; done < /etc/modules.order
acpid -c /etc/acpi -l /run/acpid.log
ip link set lo up
hostname nefos

# Networking: every interface up, DHCP in the background (boot does not wait).
for dev in /sys/class/net/*; do
  name=${dev##*/}
  [ "$name" = lo ] && continue
  ip link set "$name" up
  udhcpc -i "$name" -b -q -t 3 -T 1 -s /etc/udhcpc.script >/dev/null 2>&1 </dev/null &
done

# The NoCloud seed: a disk or cdrom labelled cidata.
seed=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
  seed=$(findfs LABEL=cidata 2>/dev/null) && break
  seed=""
  sleep 0.1
done
if [ -n "$seed" ] && mount -t iso9660 -o ro "$seed" /mnt/seed 2>/dev/null; then
  echo "NEFOS-SEED $seed"
  md=/mnt/seed/meta-data
  name=$(sed -n 's/^local-hostname: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$md" 2>/dev/null)
  [ -n "$name" ] && hostname "$name"
  echo "NEFOS-SSH-KEYS-BEGIN"
  mkdir -p /root/.ssh
  sed -n '/^public-keys:/,/^[^ ]/s/^ *- *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$md" 2>/dev/null \
    | tee /root/.ssh/authorized_keys
  echo "NEFOS-SSH-KEYS-END"
  echo "NEFOS-USER-DATA-BEGIN"
  if [ -f /mnt/seed/user-data ]; then
    cat /mnt/seed/user-data
    [ -n "$(tail -c1 /mnt/seed/user-data)" ] && echo
  fi
  echo "NEFOS-USER-DATA-END"
else
  echo "NEFOS-SEED none"
fi
echo "NEFOS-READY $(hostname) $(cut -d' ' -f1 /proc/uptime)"
# A user-data script runs (as cloud-init runs one), its output on the console.
if [ -f /mnt/seed/user-data ] && [ "$(head -c2 /mnt/seed/user-data)" = "#!" ]; then
  cp /mnt/seed/user-data /run/user-data
  chmod 700 /run/user-data
  (cd /root && setsid /run/user-data </dev/null >/dev/console 2>&1 &)
fi
EOF

cat > "$ROOT/etc/init.d/rcK" <<'EOF'
#!/bin/sh
echo "NEFOS-POWEROFF"
sync
umount -a -r 2>/dev/null
EOF

# busybox acpid: the power button's event runs this.
cat > "$ROOT/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
poweroff
EOF

cat > "$ROOT/etc/udhcpc.script" <<'EOF'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
EOF
chmod 755 "$ROOT/etc/init.d/rcS" "$ROOT/etc/init.d/rcK" "$ROOT/etc/acpi/PWRF/00000080" \
  "$ROOT/etc/udhcpc.script"
echo "nefos test page" > "$ROOT/www/index.html"
echo "root:x:0:0:root:/root:/bin/sh" > "$ROOT/etc/passwd"
echo "root:x:0:" > "$ROOT/etc/group"

mkdir -p "$WORK/out"
(cd "$ROOT" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 > "$WORK/out/initrd.img"
cp "$KERNEL" "$WORK/out/vmlinuz"
echo "console=ttyS0 quiet panic=-1" > "$WORK/out/cmdline"
{
  echo "kernel=$KVER"
  echo "inputs=$STAMP"
  (cd "$WORK/out" && sha256sum vmlinuz initrd.img | sed 's/^\([0-9a-f]*\)  \(.*\)$/sha256:\2=\1/')
} > "$WORK/out/manifest"
chmod 644 "$WORK/out"/*
chmod 755 "$WORK/out"

# Swap the new image in whole (a running test never sees half an image).
mkdir -p "$(dirname "$OUT")"
chmod 755 "$(dirname "$OUT")"
rm -rf "$OUT.old"
[ -d "$OUT" ] && mv "$OUT" "$OUT.old"
mv "$WORK/out" "$OUT"
rm -rf "$OUT.old"
echo "$OUT"
