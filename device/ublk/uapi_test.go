package ublk

import (
	"errors"
	"os"
	"testing"
	"unsafe"
)

func TestStructLayouts(t *testing.T) {
	var p params
	var pr uringParams
	var s sqe
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"ublksrv_ctrl_cmd", unsafe.Sizeof(ctrlCmd{}), 32},
		{"ublksrv_ctrl_dev_info", unsafe.Sizeof(devInfo{}), 64},
		{"ublksrv_io_desc", unsafe.Sizeof(ioDesc{}), 24},
		{"ublksrv_io_cmd", unsafe.Sizeof(ioCmd{}), 16},
		{"ublk_param_basic", unsafe.Sizeof(paramBasic{}), 32},
		{"ublk_param_discard (packed 20)", unsafe.Offsetof(paramDiscard{}.Reserved0) + 2, 20},
		{"params.basic", unsafe.Offsetof(p.Basic), 8},
		{"params.discard", unsafe.Offsetof(p.Discard), 40},
		{"io_uring_sqe", unsafe.Sizeof(sqe{}), 64},
		{"sqe.cmd", unsafe.Offsetof(s.Cmd), 48},
		{"sqe.user_data", unsafe.Offsetof(s.UserData), 32},
		{"io_uring_cqe", unsafe.Sizeof(cqe{}), 16},
		{"io_uring_params", unsafe.Sizeof(uringParams{}), 120},
		{"params.sq_off", unsafe.Offsetof(pr.SQOff), 40},
		{"params.cq_off", unsafe.Offsetof(pr.CQOff), 80},
		{"dev_info.flags", unsafe.Offsetof(devInfo{}.Flags), 24},
		{"dev_info.owner_uid", unsafe.Offsetof(devInfo{}.OwnerUID), 40},
		{"ctrl_cmd.data", unsafe.Offsetof(ctrlCmd{}.Data), 16},
		{"ctrl_cmd.dev_path_len", unsafe.Offsetof(ctrlCmd{}.DevPathLen), 24},
		{"basic.dev_sectors", unsafe.Offsetof(paramBasic{}.DevSectors), 16},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestOpcodeEncodings(t *testing.T) {
	for nr, want := range map[uint32]uint32{
		cmdGetQueueAffinity: 0x80207501, cmdGetDevInfo: 0x80207502, cmdAddDev: 0xC0207504,
		cmdDelDev: 0xC0207505, cmdStartDev: 0xC0207506, cmdStopDev: 0xC0207507,
		cmdSetParams: 0xC0207508, cmdGetParams: 0x80207509, cmdStartUserRecov: 0xC0207510,
		cmdEndUserRecov: 0xC0207511, cmdGetDevInfo2: 0x80207512, 0x14: 0x80207514,
		ioFetchReq: 0xC0107520, ioCommitAndFetchReq: 0xC0107521, ioNeedGetData: 0xC0107522,
	} {
		if got := encoded(nr); got != want {
			t.Errorf("encoded(%#x) = %#x, want %#x", nr, got, want)
		}
	}
}

func TestRingArithmetic(t *testing.T) {
	// Counters wrap at 2^32 independently of the ring size.
	if got := ringFree(0xFFFFFFFE, 2, 8); got != 4 {
		t.Fatalf("ringFree across wrap = %d, want 4", got)
	}
	if ringIndex(0xFFFFFFFF, 7) != 7 || ringIndex(8, 7) != 0 {
		t.Fatal("ring index masking")
	}
	// Descriptor arrays: stride from the maximum depth, not the queue's.
	if got := descOffset(1, 4096); got != 98304 {
		t.Fatalf("descOffset(1) = %d, want 98304", got)
	}
	if got := descLen(128, 4096); got != 4096 {
		t.Fatalf("descLen(128) = %d", got)
	}
	d := ioDesc{OpFlags: opWrite | ioFlagFUA}
	if d.op() != opWrite || d.flags() != ioFlagFUA {
		t.Fatal("op/flags split")
	}
}

// On this host (no ublk driver) Preflight refuses, saying what is missing.
func TestPreflight(t *testing.T) {
	err := Preflight()
	if _, statErr := os.Stat(ControlPath); statErr == nil && os.Geteuid() == 0 {
		if err != nil {
			t.Fatalf("Preflight with ublk present: %v", err)
		}
		return
	}
	if !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrNotRoot) {
		t.Fatalf("Preflight = %v", err)
	}
}
