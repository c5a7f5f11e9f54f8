package ublk

import (
	"errors"
	"testing"
)

// Recover's ownership check, on the GET_DEV_INFO answers it can meet.
func TestCheckOwner(t *testing.T) {
	const tag, other = 0x1234_5678_9abc_def0, 0x0fed_cba9_8765_4321
	for _, c := range []struct {
		name string
		info devInfo
		opts Options
		ok   bool
	}{
		{"our tag", devInfo{SrvFlags: tag, SrvPID: 99}, Options{Tag: tag, PrevPID: 10}, true},
		{"our tag, the kernel names another pid", devInfo{SrvFlags: tag, SrvPID: 11}, Options{Tag: tag, PrevPID: 10}, true},
		{"another root's tag, same pid", devInfo{SrvFlags: other, SrvPID: 10}, Options{Tag: tag, PrevPID: 10}, false},
		{"another root's tag, no pid", devInfo{SrvFlags: other}, Options{Tag: tag}, false},
		{"untagged, the recorded pid", devInfo{SrvPID: 10}, Options{Tag: tag, PrevPID: 10}, true},
		{"untagged, another pid", devInfo{SrvPID: 11}, Options{Tag: tag, PrevPID: 10}, false},
		{"untagged, stopped (pid -1)", devInfo{SrvPID: -1}, Options{Tag: tag, PrevPID: 10}, false},
		{"untagged, nothing to compare", devInfo{SrvPID: 10}, Options{Tag: tag}, false},
		{"a tagged device, caller without tag but with pid", devInfo{SrvFlags: other, SrvPID: 10}, Options{PrevPID: 10}, true},
		{"a tagged device, caller without tag, other pid", devInfo{SrvFlags: other, SrvPID: 11}, Options{PrevPID: 10}, false},
		{"caller knows nothing", devInfo{SrvFlags: other, SrvPID: 11}, Options{}, true},
	} {
		err := checkOwner(&c.info, c.opts)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrNotOurs)) {
			t.Errorf("%s: %v, want ok=%v", c.name, err, c.ok)
		}
	}
}
