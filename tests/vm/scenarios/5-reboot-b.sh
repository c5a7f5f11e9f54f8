# Scenario 5, boot 2 of 2 (TestDaemonReboot): the same disk after the power
# off of boot 1. No device exists yet; `obdvol daemon` started detached
# (as systemd would) activates the persistent volume again: a ublk device
# with the stable name /dev/obdvol/rb pointing at it and the data of boot 1.
O="obdvol --root /r/obdvol --no-progress"
mkdir -p /r
t s5-root-back '[ -b /dev/nvme0n1 ] && mount -t ext4 /dev/nvme0n1 /r && mounted /r && [ -s /r/known ]'
t s5-no-device-before-daemon '[ ! -e /dev/obdvol/rb ] && [ -z "$(ls /dev/ublkb* 2>/dev/null)" ]'
# s5_daemon: obdvol daemon in its own session, log in /tmp/s5-daemon.log;
# waits (60 s at most) until it answers, sets P5 to its pid.
s5_daemon() {
	setsid $O daemon 2>/tmp/s5-daemon.log &
	j=0
	until P5=$(sed -n 's/.*: pid \([0-9]*\) serving.*/\1/p' /tmp/s5-daemon.log) && [ -n "$P5" ]; do
		[ $j -lt 120 ] || { cat /tmp/s5-daemon.log; return 1; }
		sleep 0.5
		j=$((j + 1))
	done
	kill -0 $P5
}
t s5-daemon-started s5_daemon
t s5-device-back 'D=$(readlink /dev/obdvol/rb) && [ -b "$D" ] && [ -b /dev/obdvol/rb ]'
t s5-data-back 'rd /dev/obdvol/rb 8 4 /tmp/s5-rd && cmp /r/known /tmp/s5-rd'
t s5-activate-finds-it-restored 'act rb && [ "$D" = "$(readlink /dev/obdvol/rb)" ] && [ "$P" = "$P5" ] && echo "$out" | grep -q "\"restored\": true"'
t s5-deactivate '$O deactivate rb && [ ! -e $D ] && [ ! -e /dev/obdvol/rb ]'
t s5-daemon-stopped 'kill $P5 && stopped $P5'
t s5-umount-root 'umount /r && ! mounted /r && fsck_clean /dev/nvme0n1'
[ -z "$FAILED" ] || sed "s/^/  | /" /tmp/s5-daemon.log
rm -f /tmp/s5-*
