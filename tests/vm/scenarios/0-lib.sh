# Helpers for the scenarios (busybox sh). Every check prints one marker line
# that vm_test.go reads back from the serial console:
#   OBDVOL-VM-OK NAME   or   OBDVOL-VM-FAIL NAME (followed by its output)
# The host requires an OK for every check named in the scenarios and no
# FAIL. A check's success is printed only after its condition was tested:
# never after a command whose failure went unnoticed.
t() { # t NAME 'shell snippet' (runs in this shell: it may set variables)
	n=$1
	shift
	if eval "$@" >/tmp/t.out 2>&1; then
		echo "OBDVOL-VM-OK $n"
	else
		echo "OBDVOL-VM-FAIL $n"
		FAILED="$FAILED $n"
		tail -n 20 /tmp/t.out | sed "s/^/  | /"
	fi
}
# act VOL: activate VOL; sets D (the device) and P (the server's pid) and
# succeeds only if D is a block device and P is alive.
act() {
	out=$($O activate "$1" --json) || { echo "$out"; return 1; }
	D=$(echo "$out" | sed -n 's/.*"device": "\([^"]*\)".*/\1/p')
	P=$(echo "$out" | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
	[ -n "$D" ] && [ -b "$D" ] && [ -n "$P" ] && kill -0 "$P"
}
# stopped PID: waits (30 s at most) until process PID has exited (or is a
# zombie: a detached daemon's parent is this shell, which reaps late).
stopped() {
	j=0
	while kill -0 "$1" 2>/dev/null && ! grep -q "State:.Z" "/proc/$1/status" 2>/dev/null; do
		[ $j -lt 30 ] || return 1
		sleep 1
		j=$((j + 1))
	done
}
# mounted DIR: DIR is a mount point now.
mounted() { grep -q " $1 " /proc/mounts; }
# no_files_in_dev: nothing but devices, links and directories under /dev
# (a write to a vanished device node must never create a file there).
no_files_in_dev() { f=$(find /dev -type f); [ -z "$f" ] || { echo "files in /dev: $f"; return 1; }; }
# e2fsprogs' tools, not busybox's applets.
mkfs_ext4() { /usr/local/bin/mke2fs -q -F -t ext4 "$@"; }
fsck_clean() { /usr/local/bin/e2fsck -fn "$@"; }
# wr DEV SEEK_MIB COUNT_MIB FILE: writes FILE's first COUNT_MIB MiB to the
# block device DEV at SEEK_MIB MiB and flushes (never creates a file).
wr() { /guest write "$1" $(($2 << 20)) "$4" $(($3 << 20)); }
# rd DEV SKIP_MIB COUNT_MIB FILE: reads from the block device into FILE.
rd() { [ -b "$1" ] && dd if="$1" of="$4" bs=1M skip="$2" count="$3" 2>/dev/null; }
mkdir -p /mnt
