# Scenario 5, boot 1 of 2 (TestDaemonReboot): --root on a persistent disk
# (/dev/nvme0n1, a sparse image on the host, blank at this boot: formatted
# here). A volume activated through the daemon (persistent, the default),
# known data written and flushed; then the VM powers off with poweroff -f:
# no deactivate, the daemon still running, --root still mounted.
O="obdvol --root /r/obdvol --no-progress"
mkdir -p /r
t s5-disk-blank '[ -b /dev/nvme0n1 ] && ! mount -t ext4 /dev/nvme0n1 /r && ! mounted /r'
t s5-format-root 'mkfs_ext4 /dev/nvme0n1 && mount -t ext4 /dev/nvme0n1 /r && mounted /r'
t s5-create '$O create rb --size 64M'
t s5-activate-persistent 'act rb && echo "$out" | grep -q "\"persistent\": true"'
t s5-stable-name '[ "$(readlink /dev/obdvol/rb)" = "$D" ]'
t s5-known-data 'mounted /r && dd if=/dev/urandom of=/r/known bs=1M count=4 && sync'
t s5-write-flushed 'wr /dev/obdvol/rb 8 4 /r/known && sync'
t s5-readback 'rd $D 8 4 /tmp/s5-rd && cmp /r/known /tmp/s5-rd'
t s5-daemon-running 'kill -0 $P'
rm -f /tmp/s5-*
