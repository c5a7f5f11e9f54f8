# Scenario 7 (TestDaemonGrow): obdvol resize of an active volume, ext4
# mounted on its device. A kernel with ublk UPDATE_SIZE (6.16+; here only
# with OBDVOL_VM_KERNEL_DIR) grows the device in place: resize2fs online,
# the file intact, e2fsck clean. Debian's 6.12 has none: the grow is
# refused with a message that says why, and the volume's size, the
# device's size and the data are unchanged (the mount goes on).
O="obdvol --root /tmp/g7 --no-progress"
M=64M
S=$((64 << 20))
G=$((128 << 20))
# Which behaviour this kernel must show (uname -r, not the grow's outcome).
K=$(uname -r)
GROW=no
case "$K" in
[7-9].* | 6.1[6-9]* | 6.[2-9][0-9]*) GROW=yes ;;
esac
echo "s7: kernel $K, online grow expected: $GROW"
devsize() { echo $(($(cat /sys/block/${D#/dev/}/size) << 9)); }
volsize() { $O info g --json | sed -n 's/^    "size": \([0-9]*\).*/\1/p' | head -n 1; }
t s7-create '$O create g --size $M'
t s7-activate 'act g && [ "$(devsize)" = $S ]'
t s7-mkfs-mount 'mkfs_ext4 /dev/obdvol/g && mount -t ext4 /dev/obdvol/g /mnt && mounted /mnt'
dd if=/dev/urandom of=/tmp/s7-f bs=1M count=4 2>/dev/null
t s7-file 'mounted /mnt && cp /tmp/s7-f /mnt/f && sync'
# Each check below tests what this kernel must do (one name for both).
s7_resize() {
	if [ $GROW = yes ]; then
		$O resize g 128M >/tmp/s7-out 2>&1 && cat /tmp/s7-out && grep -q online /tmp/s7-out
	else
		! $O resize g 128M >/tmp/s7-out 2>&1 && cat /tmp/s7-out && grep -q "UPDATE_SIZE" /tmp/s7-out && grep -q "$K" /tmp/s7-out
	fi
}
s7_sizes() {
	want=$S
	[ $GROW = no ] || want=$G
	[ -b $D ] && [ "$(readlink /dev/obdvol/g)" = $D ] && [ "$(devsize)" = $want ] && [ "$(volsize)" = $want ] ||
		{ echo "device $(devsize), volume $(volsize), want $want"; return 1; }
}
s7_fs() {
	if [ $GROW = yes ]; then
		mounted /mnt && /usr/local/bin/resize2fs /dev/obdvol/g && [ $(df -k /mnt | awk "NR == 2 {print \$2}") -gt 100000 ]
	else
		kill -0 $P && mounted /mnt && cp /tmp/s7-f /mnt/f2 && sync && cmp /tmp/s7-f /mnt/f2
	fi
}
t s7-resize s7_resize
t s7-sizes s7_sizes
t s7-fs-after-resize s7_fs
t s7-file-intact 'mounted /mnt && cmp /tmp/s7-f /mnt/f'
t s7-umount-fsck 'umount /mnt && ! mounted /mnt && fsck_clean /dev/obdvol/g'
t s7-deactivate '$O deactivate g && [ ! -e $D ] && [ ! -e /dev/obdvol/g ]'
t s7-daemon-stopped 'kill $P && stopped $P'
[ -z "$FAILED" ] || tail -n 20 /tmp/g7/run/daemon.log | sed "s/^/  | /"
rm -rf /tmp/g7 /tmp/s7-*
