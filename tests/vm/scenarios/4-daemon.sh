# Scenario 4: the host daemon serves 8 ublk devices (activated through it),
# ext4 mounted on each through its stable name /dev/obdvol/VOL, a writer
# per filesystem writing files of known content with fsync and logging
# each one fsync acknowledged. kill -9 of the daemon; `obdvol daemon`
# started again by hand reattaches all 8 (user recovery: the same
# /dev/ublkbN, the names point at them); the writers go on without an I/O
# error; every fsynced file is intact after a remount; e2fsck is clean.
# Then a clean stop (SIGTERM) leaves the devices for the next daemon too,
# and deactivate deletes them and their names.
O="obdvol --root /tmp/d4 --no-progress"
N="0 1 2 3 4 5 6 7"
L4=/tmp/d4/run/daemon.log
dmesg -c >/dev/null
s4_create() { for i in $N; do $O create d$i --size 64M || return 1; done; }
# s4_act: activate the 8 volumes; D<i> is each device, P the daemon.
s4_act() { for i in $N; do act d$i || return 1; eval D$i=\$D; done; }
# s4_same: every volume is active on the device it had, reattached by the
# daemon at its start (activate finds it restored).
s4_same() {
	for i in $N; do
		act d$i || return 1
		eval "[ \"\$D\" = \"\$D$i\" ]" || { echo "d$i moved to $D"; return 1; }
		echo "$out" | grep -q '"restored": true' || { echo "d$i not restored: $out"; return 1; }
		[ "$P" = "$1" ] || { echo "d$i served by pid $P, not $1"; return 1; }
	done
}
s4_links() { for i in $N; do eval "[ \"\$(readlink /dev/obdvol/d$i)\" = \"\$D$i\" ]" || { echo "d$i: $(readlink /dev/obdvol/d$i)"; return 1; }; done; }
s4_mount() {
	for i in $N; do
		[ -b /dev/obdvol/d$i ] && mkdir -p /mnt/d$i && mkfs_ext4 /dev/obdvol/d$i &&
			mount -t ext4 /dev/obdvol/d$i /mnt/d$i && mounted /mnt/d$i || return 1
	done
}
s4_kept() { for i in $N; do eval "[ -b \$D$i ]" || { eval echo "\$D$i gone"; return 1; }; done; }
# s4_daemon: starts obdvol daemon in the background, waits (60 s at
# most) until it answers; sets P5 to its pid.
s4_daemon() {
	$O daemon 2>>$L4 &
	P5=$!
	j=0
	until grep -q "pid $P5 serving" $L4; do
		kill -0 $P5 || return 1
		[ $j -lt 120 ] || return 1
		sleep 0.5
		j=$((j + 1))
	done
}
# s4_writer I: until /tmp/s4-stop exists (at most 150 files), writes file
# /mnt/dI/wJ = 128 KiB block J%16 of /tmp/k4 with fsync, and logs J in
# /tmp/s4-okI once the fsync succeeded; any failure goes to /tmp/s4-wI.err.
s4_writer() {
	j=0
	while [ ! -e /tmp/s4-stop ] && [ $j -lt 150 ]; do
		mounted /mnt/d$1 || { echo "d$1 not mounted at write $j" >>/tmp/s4-w$1.err; break; }
		if dd if=/tmp/k4 of=/mnt/d$1/w$j bs=128k skip=$((j % 16)) count=1 conv=fsync 2>/tmp/s4-dd$1.err; then
			echo $j >>/tmp/s4-ok$1
		else
			{ echo "d$1 write $j failed:"; cat /tmp/s4-dd$1.err; } >>/tmp/s4-w$1.err
		fi
		j=$((j + 1))
	done
}
s4_count() { cat /tmp/s4-ok$1 2>/dev/null | wc -l; }
# s4_progress: every writer acknowledged more files than recorded in C<i>.
s4_progress() {
	for i in $N; do
		eval c=\$C$i
		[ "$(s4_count $i)" -gt "$c" ] || { echo "writer $i: $(s4_count $i) files, $c before"; return 1; }
	done
}
s4_snap_counts() { for i in $N; do eval C$i=$(s4_count $i); done; }
# s4_fsynced_intact: every file a writer saw fsynced has its content.
s4_fsynced_intact() {
	for i in $N; do
		mounted /mnt/d$i && [ -s /tmp/s4-ok$i ] || return 1
		for j in $(cat /tmp/s4-ok$i); do
			dd if=/tmp/k4 of=/tmp/s4-x bs=128k skip=$((j % 16)) count=1 2>/dev/null &&
				cmp /tmp/s4-x /mnt/d$i/w$j || return 1
		done
		cmp /tmp/k4 /mnt/d$i/k || return 1
	done
}
s4_remount() { for i in $N; do umount /mnt/d$i && ! mounted /mnt/d$i && mount -t ext4 /dev/obdvol/d$i /mnt/d$i && mounted /mnt/d$i || return 1; done; }
s4_umount_fsck() { for i in $N; do umount /mnt/d$i && ! mounted /mnt/d$i && fsck_clean /dev/obdvol/d$i || return 1; done; }
s4_deactivate() { for i in $N; do eval "[ -b \$D$i ]" && $O deactivate d$i && eval "[ ! -e \$D$i ]" && [ ! -e /dev/obdvol/d$i ] || return 1; done; }
t s4-create s4_create
t s4-activate-8 s4_act
P4=$P
t s4-stable-names s4_links
t s4-mkfs-mount-8 s4_mount
dd if=/dev/urandom of=/tmp/k4 bs=1M count=2 2>/dev/null
s4_files() { for i in $N; do mounted /mnt/d$i && cp /tmp/k4 /mnt/d$i/k || return 1; done && sync; }
t s4-files s4_files
rm -f /tmp/s4-*
W4=
for i in $N; do
	s4_writer $i &
	W4="$W4 $!"
done
sleep 2
s4_snap_counts
s4_busy() { for w in $W4; do kill -0 $w || return 1; done && sleep 2 && s4_progress; }
t s4-writers-busy s4_busy
s4_snap_counts
t s4-daemon-killed 'kill -9 $P4 && stopped $P4'
sleep 2
t s4-devices-kept s4_kept
t s4-daemon-restarted s4_daemon
t s4-reattached-same-devices 's4_same $P5'
t s4-stable-names-after-restart s4_links
sleep 2
t s4-writers-go-on s4_progress
touch /tmp/s4-stop
for w in $W4; do wait $w; done
t s4-writers-no-errors '! cat /tmp/s4-w*.err 2>/dev/null | grep .'
t s4-no-io-errors-after-recovery '! dmesg | grep -i "I/O error\|EXT4-fs error\|Buffer I/O\|ublk.*err"'
t s4-fsynced-intact s4_fsynced_intact
t s4-clean-stop 'kill $P5 && stopped $P5'
t s4-devices-kept-after-stop s4_kept
t s4-daemon-restarted-after-stop s4_daemon
t s4-restored-after-stop 's4_same $P5'
t s4-remount s4_remount
t s4-fsynced-intact-after-remount s4_fsynced_intact
t s4-umount-fsck-clean s4_umount_fsck
t s4-deactivate-8 s4_deactivate
t s4-no-files-in-dev no_files_in_dev
t s4-daemon-stopped 'kill $P5 && stopped $P5'
for i in $N; do echo "s4: writer $i: $(s4_count $i) files fsynced"; done
[ -z "$FAILED" ] || tail -n 40 $L4 | sed "s/^/  | /"
rm -rf /tmp/d4 /tmp/k4 /tmp/s4-*
