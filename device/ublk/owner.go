package ublk

import (
	"errors"
	"fmt"
)

// ErrNotOurs is wrapped when Recover finds that the kernel device with
// the recorded id is not the one its caller's server left: its tag or
// its server PID differ (the id was freed and taken by another device,
// possibly another root's daemon, in the same boot). Nothing was changed.
var ErrNotOurs = errors.New("the ublk device is another server's")

// checkOwner decides whether the kernel device described by info (from
// GET_DEV_INFO) is the one opts expects to reattach:
//
//   - a tagged device (ublksrv_flags, set from Options.Tag by ADD_DEV and
//     kept by the kernel for userspace) must carry opts.Tag exactly;
//   - an untagged device (made before tags, or by another program) must
//     name opts.PrevPID as its server (ublksrv_pid, set by START_DEV and
//     END_USER_RECOVERY from the server's getpid), when opts.PrevPID is
//     set; when opts.Tag is set and opts.PrevPID is not, it is refused.
//
// With neither Tag nor PrevPID set nothing is checked (callers that know
// nothing of the device).
func checkOwner(info *devInfo, opts Options) error {
	id := info.DevID
	if opts.Tag != 0 && info.SrvFlags != 0 {
		if info.SrvFlags != opts.Tag {
			return fmt.Errorf("ublk device %d carries tag %#x, want %#x: %w", id, info.SrvFlags, opts.Tag, ErrNotOurs)
		}
		return nil
	}
	if opts.PrevPID != 0 {
		if int(info.SrvPID) != opts.PrevPID {
			return fmt.Errorf("ublk device %d was served by pid %d, the record names pid %d: %w", id, info.SrvPID, opts.PrevPID, ErrNotOurs)
		}
		return nil
	}
	if opts.Tag != 0 {
		return fmt.Errorf("ublk device %d has no tag and no server PID to compare: %w", id, ErrNotOurs)
	}
	return nil
}
