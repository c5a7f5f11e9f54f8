# Scenario 2: ext4 on the device, files, live snapshot, more files,
# rollback: the snapshot's files are there byte-exact, the newer one is
# gone, e2fsck is clean; then deactivate while a writer is busy on the
# device (its writes fail once the device is gone, and never create a
# file in its place), activate again: what was flushed before is intact.
O="obdvol --root /tmp/f --no-progress"
t s2-create '$O create fs --size 128M'
t s2-activate 'act fs'
t s2-mkfs 'mkfs_ext4 $D'
t s2-mount 'mount -t ext4 $D /mnt && mounted /mnt'
dd if=/dev/urandom of=/tmp/f1 bs=1M count=3 2>/dev/null
t s2-write-files 'mounted /mnt && cp /tmp/f1 /mnt/f1 && echo hello >/mnt/hello && sync'
t s2-live-snapshot '$O snapshot fs@s1'
t s2-write-newer 'mounted /mnt && dd if=/dev/urandom of=/mnt/newer bs=1M count=2 2>/dev/null && sync'
t s2-umount 'umount /mnt && ! mounted /mnt'
t s2-deactivate '$O deactivate fs && [ ! -e $D ]'
t s2-rollback '$O rollback fs@s1'
t s2-activate-after-rollback 'act fs'
t s2-mount-after-rollback 'mount -t ext4 $D /mnt && mounted /mnt'
t s2-snapshot-files-exact 'mounted /mnt && cmp /tmp/f1 /mnt/f1 && grep -q hello /mnt/hello'
t s2-newer-file-gone 'mounted /mnt && [ ! -e /mnt/newer ]'
t s2-umount-again 'umount /mnt && ! mounted /mnt'
t s2-fsck-clean 'fsck_clean $D'
dd if=/dev/urandom of=/tmp/g bs=1M count=4 2>/dev/null
t s2-write-before-load 'wr $D 64 4 /tmp/g'
/guest write $D $((2000 << 16)) /dev/urandom $((1 << 20)) loop >/tmp/s2-writer.log 2>&1 &
W=$!
sleep 1
t s2-writer-was-busy 'kill -0 $W'
t s2-deactivate-under-load '$O deactivate fs && [ ! -e $D ]'
# The writer stops by itself: its next write finds no device.
i=0
while kill -0 $W 2>/dev/null && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
t s2-writer-stopped '! kill -0 $W 2>/dev/null && cat /tmp/s2-writer.log && grep -q "writer stopped after [1-9]" /tmp/s2-writer.log'
kill $W 2>/dev/null
t s2-no-files-in-dev-after-load no_files_in_dev
t s2-write-to-gone-device-refused '! wr $D 0 1 /tmp/g && [ ! -e $D ]'
t s2-activate-after-load 'act fs'
t s2-data-intact-after-load 'rd $D 64 4 /tmp/h && cmp /tmp/g /tmp/h'
t s2-deactivate-final '$O deactivate fs && [ ! -e $D ]'
t s2-no-files-in-dev no_files_in_dev
rm -rf /tmp/f /tmp/f1 /tmp/g /tmp/h /tmp/s2-*
