# Power cuts (run by TestPowerCut with SEED, STEPS, POINTS, PROBE, FSCK, FORCE and SUBSETS set):
# obdvol's root on ext4 over dm-log-writes, a workload of real obdvol
# commands, then the log replayed to every flush, FUA and mark, each state
# mounted and checked against the model (tests/vm/guest/powercut.go).
t pc-modules 'insmod /lib/modules/brd.ko rd_nr=3 rd_size=524288 && insmod /lib/modules/dm-mod.ko && insmod /lib/modules/dm-log-writes.ko'
t pc-devices '[ -b /dev/ram0 ] && [ -b /dev/ram1 ] && [ -b /dev/ram2 ] && [ -c /dev/mapper/control ]'
/guest powercut -seed "$SEED" -steps "$STEPS" -points "$POINTS" -fsck="$FSCK" -probe "$PROBE" -force "$FORCE" -subsets "$SUBSETS" -v 2>&1
echo "OBDVOL-VM-POWERCUT-EXIT $?"
t pc-no-files-in-dev no_files_in_dev
