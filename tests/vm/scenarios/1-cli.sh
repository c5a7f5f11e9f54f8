# Scenario 1: the real obdvol binary: activate (detached), write, live
# snapshot, more writes, refusals while active, deactivate, rollback,
# activate again: the device holds exactly the snapshot's data.
O="obdvol --root /tmp/r --no-progress"
t s1-create '$O create v --size 64M'
t s1-activate 'act v'
t s1-activate-again-refused '! $O activate v >/tmp/s1-again 2>&1 && grep -q "already active" /tmp/s1-again'
dd if=/dev/urandom of=/tmp/a bs=1M count=8 2>/dev/null
dd if=/dev/urandom of=/tmp/a2 bs=1M count=8 2>/dev/null
t s1-write 'wr $D 0 8 /tmp/a'
t s1-live-snapshot '$O snapshot v@s1 && [ -b $D ]'
t s1-write-after-snapshot 'wr $D 0 8 /tmp/a2'
t s1-rollback-refused-while-active '! $O rollback v@s1 >/tmp/s1-rb 2>&1 && grep -qi "active\|in use" /tmp/s1-rb'
t s1-deactivate '$O deactivate v && [ ! -e $D ]'
t s1-deactivated-clean '$O list | grep -q " - *$"'
t s1-rollback '$O rollback v@s1'
t s1-activate-after-rollback 'act v'
t s1-rollback-exact 'rd $D 0 8 /tmp/b && cmp /tmp/a /tmp/b'
t s1-deactivate-final '$O deactivate v && [ ! -e $D ]'
t s1-no-files-in-dev no_files_in_dev
rm -rf /tmp/r /tmp/a /tmp/a2 /tmp/b /tmp/s1-*
