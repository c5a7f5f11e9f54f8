# Scenario 3: ext4 mounted on the device, a writer busy, the server killed
# with SIGKILL; activate reattaches a new server to the same device (ublk
# user recovery): the writer and the mount go on without I/O errors,
# flushed data is intact, and the filesystem checks clean.
O="obdvol --root /tmp/rc --no-progress"
dmesg -c >/dev/null
t s3-create '$O create rv --size 128M'
t s3-activate 'act rv'
D0=$D
t s3-mkfs 'mkfs_ext4 $D'
t s3-mount 'mount -t ext4 $D /mnt && mounted /mnt'
dd if=/dev/urandom of=/tmp/k1 bs=1M count=4 2>/dev/null
t s3-write-file 'mounted /mnt && cp /tmp/k1 /mnt/k1 && sync'
rm -f /tmp/s3-writer.err
(i=0; while [ $i -lt 200 ]; do
	mounted /mnt || { echo "not mounted at write $i" >>/tmp/s3-writer.err; break; }
	dd if=/dev/urandom of=/mnt/busy bs=64k count=4 conv=fsync 2>/tmp/s3-dd.err ||
		{ echo "write $i failed:"; cat /tmp/s3-dd.err; } >>/tmp/s3-writer.err
	i=$((i + 1))
done) &
W=$!
sleep 1
t s3-writer-was-busy 'kill -0 $W'
t s3-server-killed 'kill -9 $P'
sleep 1
t s3-device-kept '[ -b $D0 ]'
t s3-recovered 'act rv && [ "$D" = "$D0" ]'
wait $W
t s3-writer-no-errors '[ ! -s /tmp/s3-writer.err ] || { cat /tmp/s3-writer.err; false; }'
t s3-no-io-errors-after-recovery '! dmesg | grep -i "I/O error\|EXT4-fs error\|Buffer I/O"'
t s3-recovery-data-intact 'mounted /mnt && cmp /tmp/k1 /mnt/k1'
t s3-umount 'umount /mnt && ! mounted /mnt'
t s3-recovery-fsck-clean 'fsck_clean $D'
t s3-deactivate '$O deactivate rv && [ ! -e $D ]'
t s3-no-files-in-dev no_files_in_dev
rm -rf /tmp/rc /tmp/k1 /tmp/s3-*
