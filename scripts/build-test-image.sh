#!/usr/bin/env bash
# Build the image the container tests run, localhost/nefos-busybox:test, if it is
# missing. There is no registry to pull from, so it is made here: a rootfs with
# Debian's static busybox (every applet linked), a page under /www, imported with
# `podman import`. Its default command serves /www on port 8080 with busybox httpd.
# Idempotent; needs podman and busybox-static (scripts/bootstrap-services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${NEFOS_TEST_IMAGE:-localhost/nefos-busybox:test}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/var/podman/containers.conf}
die() { echo "build-test-image: $*" >&2; exit 1; }

podman image exists "$IMAGE" && exit 0
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX is missing: apt-get install busybox-static"
"$BUSYBOX" true || die "$BUSYBOX does not run"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root="$tmp/rootfs"
mkdir -p "$root"/{bin,www,tmp,etc}
chmod 1777 "$root/tmp"
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
echo "nobody:x:65534:65534:nobody:/:/bin/false" >> "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
echo "nefos test page" > "$root/www/index.html"
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$tmp/rootfs.tar" .

podman import --quiet \
  --change 'CMD ["/bin/busybox", "httpd", "-f", "-v", "-p", "8080", "-h", "/www"]' \
  --change 'EXPOSE 8080/tcp' \
  --change 'ENV PATH=/bin' \
  "$tmp/rootfs.tar" "$IMAGE" >/dev/null || die "podman import of $IMAGE failed"
podman image exists "$IMAGE" || die "$IMAGE is missing right after podman import"
echo "Built test image $IMAGE"
