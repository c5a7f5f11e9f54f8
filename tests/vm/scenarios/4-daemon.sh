# Scenario 4 (DRAFT, not yet run: add "4-*.sh" to TestBootUblkKernel once it
# passes in the VM): the host daemon serves 8 ublk devices with ext4 mounted
# through their stable names /dev/obdvol/VOL and fsync-ing writers; kill -9
# of the daemon; the next activate starts a daemon that reattaches all 8
# (user recovery): no I/O error, data intact, e2fsck clean. Then a clean
# stop (SIGTERM) leaves the devices too, and deactivate deletes them and
# their names.
O="obdvol --root /tmp/d4 --no-progress"
N="0 1 2 3 4 5 6 7"
dmesg -c >/dev/null
s4_create() { for i in $N; do $O create d$i --size 64M || return 1; done; }
# s4_act: activate the 8 volumes; D<i> is each device, P the daemon.
s4_act() { for i in $N; do act d$i || return 1; eval D$i=\$D; done; }
s4_same() { for i in $N; do act d$i || return 1; eval "[ \"\$D\" = \"\$D$i\" ]" || { echo "d$i moved to $D"; return 1; }; done; }
s4_links() { for i in $N; do eval "[ \"\$(readlink /dev/obdvol/d$i)\" = \"\$D$i\" ]" || { echo "d$i: $(readlink /dev/obdvol/d$i)"; return 1; }; done; }
s4_mount() { for i in $N; do mkdir -p /mnt/d$i && mkfs_ext4 /dev/obdvol/d$i && mount -t ext4 /dev/obdvol/d$i /mnt/d$i && mounted /mnt/d$i || return 1; done; }
s4_files() { for i in $N; do cp /tmp/k4 /mnt/d$i/k || return 1; done && sync; }
s4_kept() { for i in $N; do eval "[ -b \$D$i ]" || return 1; done; }
s4_cmp() { for i in $N; do mounted /mnt/d$i && cmp /tmp/k4 /mnt/d$i/k || return 1; done; }
s4_umount_fsck() { for i in $N; do umount /mnt/d$i && ! mounted /mnt/d$i && fsck_clean /dev/obdvol/d$i || return 1; done; }
s4_deactivate() { for i in $N; do $O deactivate d$i && eval "[ ! -e \$D$i ]" && [ ! -e /dev/obdvol/d$i ] || return 1; done; }
s4_stopped() { # waits (at most 30 s) until daemon $1 has exited (or is a zombie)
	j=0
	while kill -0 "$1" 2>/dev/null && ! grep -q "State:.Z" "/proc/$1/status" 2>/dev/null; do
		[ $j -lt 30 ] || return 1
		sleep 1
		j=$((j + 1))
	done
}
t s4-create s4_create
t s4-activate-8 s4_act
P4=$P
t s4-stable-names s4_links
t s4-mkfs-mount-8 s4_mount
dd if=/dev/urandom of=/tmp/k4 bs=1M count=2 2>/dev/null
t s4-files s4_files
rm -f /tmp/s4-w*.err
for i in $N; do
	(j=0; while [ $j -lt 50 ]; do
		mounted /mnt/d$i || { echo "d$i not mounted at write $j" >>/tmp/s4-w$i.err; break; }
		dd if=/dev/urandom of=/mnt/d$i/busy bs=64k count=2 conv=fsync 2>/tmp/s4-dd$i.err ||
			{ echo "d$i write $j failed:"; cat /tmp/s4-dd$i.err; } >>/tmp/s4-w$i.err
		j=$((j + 1))
	done) &
done
sleep 1
t s4-daemon-killed 'kill -9 $P4'
sleep 1
t s4-devices-kept s4_kept
t s4-reattached-same-devices s4_same
t s4-new-daemon '[ "$P" != "$P4" ] && kill -0 $P'
wait
t s4-writers-no-errors '! cat /tmp/s4-w*.err 2>/dev/null | grep .'
t s4-no-io-errors-after-recovery '! dmesg | grep -i "I/O error\|EXT4-fs error\|Buffer I/O"'
t s4-data-intact s4_cmp
P4=$P
t s4-clean-stop 'kill $P4 && s4_stopped $P4'
t s4-devices-kept-after-stop s4_kept
t s4-restored-after-stop s4_same
t s4-data-intact-after-stop s4_cmp
t s4-umount-fsck-clean s4_umount_fsck
t s4-deactivate-8 s4_deactivate
t s4-no-files-in-dev no_files_in_dev
kill $P 2>/dev/null
rm -rf /tmp/d4 /tmp/k4 /tmp/s4-*
