#!/usr/bin/env bash
# The golden-disk story, end to end, with no root and no network:
#   build an ext4 image from a directory, import it as a golden volume,
#   snapshot it, clone three volumes, change one, roll it back, export
#   everything and compare checksums.
set -euo pipefail
cd "$(dirname "$0")/.."
OBDVOL="$PWD/bin/obdvol"
OUT="$PWD/demo-out"
rm -rf "$OUT"
mkdir -p "$OUT/files/etc" "$OUT/files/app"
A="$OUT/hostA"
ob() { "$OBDVOL" --root "$A" --no-progress "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
sum() { sha256sum "$1" | cut -c1-16; }

step "1. build a 64 MiB ext4 golden image from a directory (mke2fs -d, no root)"
echo "golden $(date -u +%F)" >"$OUT/files/etc/motd"
head -c 8M /dev/urandom >"$OUT/files/app/blob.bin"
seq 1 200000 >"$OUT/files/app/numbers.txt"
mke2fs -q -F -t ext4 -d "$OUT/files" "$OUT/golden.img" 64M
echo "golden.img sha256 $(sum "$OUT/golden.img")"

step "2. import it as volume 'golden' and snapshot golden@v1"
ob create golden --size 64M
ob import golden "$OUT/golden.img"
ob snapshot golden@v1
ob info golden

step "3. clone three volumes from golden@v1 (no data copied)"
for i in 1 2 3; do ob create "vm$i" --from golden@v1; done
ob list

step "4. change vm2: overwrite its first MiB, snapshot it, then roll it back"
ob snapshot vm2@before
head -c 1M /dev/urandom >"$OUT/junk.bin"
ob import vm2 "$OUT/junk.bin"
ob export vm2 "$OUT/vm2-changed.img"
echo "vm2 after change  $(sum "$OUT/vm2-changed.img")"
ob rollback vm2@before
ob export vm2 "$OUT/vm2.img"
echo "vm2 after rollback $(sum "$OUT/vm2.img")"

step "5. export every volume and compare checksums with the golden image"
ok=1
want=$(sum "$OUT/golden.img")
for v in golden@v1 vm1 vm2 vm3; do
	f="$OUT/export-${v/@/_}.img"
	ob export "$v" "$f"
	got=$(sum "$f")
	status=OK; [ "$got" = "$want" ] || { status=DIFFERENT; ok=0; }
	printf '%-10s %s %s\n' "$v" "$got" "$status"
done
[ "$(sum "$OUT/vm2-changed.img")" != "$want" ] || { echo "the change to vm2 did not show"; ok=0; }
e2fsck -fn "$OUT/export-vm1.img" >/dev/null 2>&1 && echo "e2fsck on vm1's export: clean"

step "6. verify every byte of golden's chain, and show what is stored"
ob verify golden
ob gc --dry-run
du -sh "$A/blobs" | awk '{print "content store: " $1 " for 4 volumes (one copy of the golden layer)"}'

step "7. start a registry on loopback (Debian's docker-registry) for the fleet"
B="$OUT/hostB"; C="$OUT/hostC"
obB() { "$OBDVOL" --root "$B" --no-progress "$@"; }
obC() { "$OBDVOL" --root "$C" --no-progress "$@"; }
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])' 2>/dev/null || echo 5077)
if command -v docker-registry >/dev/null; then
	mkdir -p "$OUT/registry"
	cat >"$OUT/registry/config.yml" <<YML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $OUT/registry/storage}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$PORT}
YML
	docker-registry serve "$OUT/registry/config.yml" >"$OUT/registry/log" 2>&1 &
	REG_PID=$!
	trap 'kill $REG_PID 2>/dev/null' EXIT
	for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
	REF="127.0.0.1:$PORT/disks/golden"; TX=(--plain-http)
	echo "registry on 127.0.0.1:$PORT"
else
	REF="oci:$OUT/layout"; TX=()
	echo "docker-registry not installed: using an OCI layout directory ($REF)"
fi

step "8. host A pushes golden@v1; host B pulls it, clones it, checks it"
ob push golden@v1 "$REF:v1" "${TX[@]}"
obB pull "$REF:v1" golden "${TX[@]}"
obB create web1 --from golden@v1
obB export web1 "$OUT/b-web1.img"
echo "host B web1 $(sum "$OUT/b-web1.img") (golden $want)"
[ "$(sum "$OUT/b-web1.img")" = "$want" ] || { echo "host B differs"; ok=0; }

step "9. host A updates golden (v2) and pushes: only the new layer travels"
echo "golden v2" >"$OUT/v2.txt"
head -c 2M /dev/urandom >"$OUT/v2.bin"
ob import golden "$OUT/v2.bin" --offset 40M
ob snapshot golden@v2
ob push golden@v2 "$REF:v2" "${TX[@]}"
obB pull "$REF:v2" golden "${TX[@]}"
ob export golden@v2 "$OUT/a-v2.img"; obB export golden "$OUT/b-v2.img"
echo "v2 on A $(sum "$OUT/a-v2.img"), on B $(sum "$OUT/b-v2.img")"
[ "$(sum "$OUT/a-v2.img")" = "$(sum "$OUT/b-v2.img")" ] || { echo "v2 differs"; ok=0; }

step "10. host C pulls v2 lazily: usable at once, data fetched on demand"
obC pull --lazy "$REF:v2" golden "${TX[@]}"
obC info golden | sed -n '/chain:/,/snapshots:/p'
obC export golden "$OUT/c-v2.img"
echo "v2 on C $(sum "$OUT/c-v2.img")"
[ "$(sum "$OUT/c-v2.img")" = "$(sum "$OUT/a-v2.img")" ] || { echo "lazy v2 differs"; ok=0; }
obC fill golden

step "11. host B's golden as a block device (ublk)"
if [ -e /dev/ublk-control ] && [ "$(id -u)" = 0 ]; then
	obB create disk --from golden@v2
	obB activate disk
	DEV=$(obB info disk | awk '/^device:/{print $2}')
	mkdir -p "$OUT/mnt" && mount -o ro "$DEV" "$OUT/mnt" && ls "$OUT/mnt" && umount "$OUT/mnt"
	obB deactivate disk
	# activate started B's host daemon (obdvol daemon); stop it.
	kill "$(cat "$B/run/daemon.lock")" 2>/dev/null || true
else
	echo "this kernel has no ublk (/dev/ublk-control missing): running the ublk part in a VM"
	echo "(Debian's 6.12 kernel under qemu: activate, ext4, live snapshot, rollback, deactivate)"
	go test -count=1 -v -run TestBootUblkKernel ./tests/vm/ 2>&1 | grep -oE "OBDVOL-VM-[A-Za-z0-9-]+( OK| /dev/ublkb[0-9]+)?|^(ok|FAIL).*" | sed 's/^/  /'
fi

step "summary"
if [ $ok = 1 ]; then
	echo "golden image imported, snapshotted, cloned 3x, vm2 changed and rolled back: all exports match ($want)"
	echo "pushed to $REF, pulled on host B (full, then v2 incrementally) and host C (lazily): all checksums match"
else
	echo "MISMATCH: see above"; exit 1
fi
