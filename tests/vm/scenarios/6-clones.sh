# Scenario 6 (TestDaemonClones): 16 clones of one golden snapshot served as
# ublk devices by one daemon. The golden's content is known (sha256); each
# clone reads back byte-exact; the golden's chunks are decompressed once
# for all of them (the daemon's shared cache counters: the count after
# reading one clone does not move while 16 are read); the daemon's RSS
# with 16 devices is within 1.5 x its RSS with one, plus 2 MiB a device,
# for devices of 1 queue of depth 4, and again with the 15 other clones
# activated with the defaults (a queue per CPU, depth 64). Per-tag buffers
# (ublk's copy mode) made that 104 MiB for 16 devices here, over the bound
# (each tag's 512 KiB buffer stays resident once used); with user copy
# (Linux 6.5+) request data goes through one pool for the daemon, so memory
# follows the requests in flight, not the devices.
# The daemon's Prometheus endpoint (--metrics), scraped over HTTP, counts
# the reads each clone served and the one decompression of each chunk.
O="obdvol --root /tmp/c6 --no-progress"
L6=/tmp/s6-daemon.log
C6="0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"
# The golden: 8 MiB of compressible data (base64 of random bytes) at the
# start of a 16 MiB volume, the rest never written (zeros).
head -c 6291456 /dev/urandom | base64 | head -c 8388608 >/tmp/s6-g
{ cat /tmp/s6-g; head -c 8388608 /dev/zero; } | sha256sum | cut -d' ' -f1 >/tmp/s6-want
s6_golden() {
	$O create g --size 16M && act g && wr $D 0 8 /tmp/s6-g && $O deactivate g && [ ! -e $D ] &&
		kill $P && stopped $P && $O snapshot g@v1
}
s6_clones() { for i in $C6; do $O create c$i --from g@v1 || return 1; done; }
# s6_daemon: obdvol daemon in the background, log in L6; waits (60 s at
# most) until it answers; sets PD to its pid.
s6_daemon() {
	ip link set lo up
	$O daemon --metrics 127.0.0.1:9863 2>>$L6 &
	PD=$!
	j=0
	until grep -q "pid $PD serving" $L6; do
		kill -0 $PD || return 1
		[ $j -lt 120 ] || return 1
		sleep 0.5
		j=$((j + 1))
	done
}
# s6_status: the daemon's status; sets DEC (chunks decompressed since it
# started), ACT (volumes it serves).
s6_status() {
	$O daemon status --json >/tmp/s6-status || { cat /tmp/s6-status; return 1; }
	DEC=$(sed -n 's/.*"chunks_decompressed": \([0-9]*\).*/\1/p' /tmp/s6-status)
	ACT=$(sed -n 's/.*"active": \([0-9]*\).*/\1/p' /tmp/s6-status)
	[ -n "$DEC" ] && [ -n "$ACT" ] || { cat /tmp/s6-status; return 1; }
}
# s6_metrics: the bytes every clone read (its 16 MiB device, once; c0
# twice; the kernel's partition scan adds a few KiB) and the chunks
# decompressed (DEC) as the endpoint counts them.
s6_metrics() {
	wget -q -O /tmp/s6-metrics http://127.0.0.1:9863/metrics || return 1
	m=$(awk '/^obdvol_chunk_cache_decompressions_total / {print $2 + 0}' /tmp/s6-metrics)
	[ "$m" = "$DEC" ] || { echo "decompressions: metrics $m, status $DEC"; return 1; }
	for i in $C6; do
		b=$(awk -v v="volume=\"c$i\"" 'index($0, "obdvol_volume_bytes_total{") == 1 && index($0, v) && index($0, "op=\"read\"") {printf "%d", $2}' /tmp/s6-metrics)
		w=16777216 # c0 was read twice (a block device's page cache goes at its last close)
		[ $i = 0 ] && w=33554432
		[ -n "$b" ] && [ "$b" -ge $w ] && [ "$b" -le $((w + 1048576)) ] || { echo "c$i: $b bytes read, want $w"; grep "bytes_total.*c$i\"" /tmp/s6-metrics; return 1; }
	done
}
rss_kb() { sed -n "s/^VmRSS:[^0-9]*\([0-9]*\) kB/\1/p" /proc/$1/status; }
# s6_read I...: reads clones I... at once, each whole device; each sum
# must be the golden's. (A bare wait would wait for the daemon too.)
s6_read() {
	w=
	for i in "$@"; do
		d=$(readlink /dev/obdvol/c$i) && [ -b "$d" ] || { echo "c$i: no device"; return 1; }
		sha256sum /dev/obdvol/c$i >/tmp/s6-sum$i &
		w="$w $!"
	done
	for p in $w; do wait $p; done
	for i in "$@"; do
		[ "$(cut -d' ' -f1 /tmp/s6-sum$i)" = "$(cat /tmp/s6-want)" ] || { echo "c$i differs: $(cat /tmp/s6-sum$i)"; return 1; }
	done
}
# s6_act_all [FLAGS]: activates c1..c15 at once (15 activate commands in
# parallel).
s6_act_all() {
	w=
	for i in $C6; do
		[ $i = 0 ] && continue
		$O activate c$i --json "$@" >/tmp/s6-act$i 2>&1 &
		w="$w $!"
	done
	for p in $w; do wait $p; done
	for i in $C6; do
		[ $i = 0 ] || grep -q '"device": "/dev/ublkb' /tmp/s6-act$i || { cat /tmp/s6-act$i; return 1; }
	done
}
t s6-golden s6_golden
t s6-clones s6_clones
t s6-daemon s6_daemon
Q6="--queues 1 --depth 4"
s6_act0() { out=$($O activate c0 --json $Q6) && D=$(echo "$out" | sed -n 's/.*"device": "\([^"]*\)".*/\1/p') && [ -b "$D" ]; }
t s6-activate-1 s6_act0
t s6-read-1 's6_read 0'
t s6-status-1 's6_status && [ "$DEC" -gt 0 ] && [ "$ACT" = 1 ]'
DEC1=$DEC
RSS1=$(rss_kb $PD)
t s6-activate-16-at-once 's6_act_all $Q6'
t s6-read-16-exact 's6_read $C6'
t s6-status-16 's6_status && [ "$ACT" = 16 ]'
RSS16=$(rss_kb $PD)
t s6-metrics-scraped s6_metrics
echo "s6: chunks decompressed: $DEC1 after 1 clone read, $DEC after 16"
echo "s6: daemon RSS (1 queue of depth 4 a device): $RSS1 KiB with 1 device, $RSS16 KiB with 16 (bound $((RSS1 * 3 / 2 + 16 * 2048)) KiB)"
t s6-golden-decompressed-once '[ "$DEC" = "$DEC1" ]'
t s6-rss-bound '[ -n "$RSS1" ] && [ -n "$RSS16" ] && [ $((RSS16 * 2)) -le $((RSS1 * 3 + 16 * 4096)) ]'
s6_deactivate15() { for i in $C6; do [ $i = 0 ] && continue; d=$(readlink /dev/obdvol/c$i) && $O deactivate c$i && [ ! -e $d ] || return 1; done; }
t s6-deactivate-15 s6_deactivate15
t s6-activate-15-defaults s6_act_all
t s6-read-16-defaults 's6_read $C6'
t s6-status-defaults 's6_status && [ "$ACT" = 16 ] && [ "$DEC" = "$DEC1" ]'
RSSD=$(rss_kb $PD)
echo "s6: daemon RSS (15 devices at the defaults, $(nproc) queues of depth 64): $RSSD KiB with 16 devices (bound $((RSS1 * 3 / 2 + 16 * 2048)) KiB)"
t s6-rss-bound-defaults '[ -n "$RSSD" ] && [ $((RSSD * 2)) -le $((RSS1 * 3 + 16 * 4096)) ]'
s6_deactivate() { for i in $C6; do d=$(readlink /dev/obdvol/c$i) && $O deactivate c$i && [ ! -e $d ] || return 1; done; }
t s6-deactivate-16 s6_deactivate
t s6-daemon-stopped 'kill $PD && stopped $PD'
[ -z "$FAILED" ] || { tail -n 40 $L6; tail -n 20 /tmp/c6/run/daemon.log; } 2>&1 | sed "s/^/  | /"
rm -rf /tmp/c6 /tmp/s6-*
