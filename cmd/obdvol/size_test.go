package main

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
	}{
		{"0", 0},
		{"1", 1},
		{"512", 512},
		{"512B", 512},
		{"512b", 512},
		{"1K", 1 << 10},
		{"1k", 1 << 10},
		{"1KB", 1 << 10},
		{"1KiB", 1 << 10},
		{"1kib", 1 << 10},
		{"64M", 64 << 20},
		{"4MiB", 4 << 20},
		{"10G", 10 << 30},
		{"10g", 10 << 30},
		{"1T", 1 << 40},
		{"2P", 2 << 50},
		{"1E", 1 << 60},
		{"15E", 15 << 60},
		{" 8M ", 8 << 20},
		{"0010K", 10 << 10},
		{"16383P", 16383 << 50},
		{"18446744073709551615", math.MaxUint64},
		{"17179869183G", 17179869183 << 30},
	} {
		got, err := parseSize(c.in)
		if err != nil || got != c.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, c := range []struct{ in, msg string }{
		{"", "invalid size"},
		{" ", "invalid size"},
		{"10X", "invalid size"},
		{"-1", "invalid size"},
		{"+1", "invalid size"},
		{"1.5G", "invalid size"},
		{"1e3", "invalid size"},
		{"0x10", "invalid size"},
		{"1_000", "invalid size"},
		{"K", "invalid size"},
		{"B", "invalid size"},
		{"KB", "invalid size"},
		{"G1", "invalid size"},
		{"1 G", "invalid size"},
		{"1GG", "invalid size"},
		{"1MK", "invalid size"},
		{"18446744073709551616", "invalid size"},
		{"20000P", "too large"},
		{"16E", "too large"},
		{"16384P", "too large"},
		{"17179869184G", "too large"},
		{"18014398509481984K", "too large"},
	} {
		got, err := parseSize(c.in)
		var ue usageError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), "\""+c.in+"\"") {
			t.Errorf("parseSize(%q) = %d, %v; want a usage error %q naming the input", c.in, got, err, c.msg)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for _, c := range []struct {
		in   uint64
		want string
	}{
		{0, "0B"},
		{1, "1B"},
		{1023, "1023B"},
		{1024, "1K"},
		{1536, "1.5K"},
		{100000, "97.7K"},
		{16 << 20, "16M"},
		{3<<30 + 1<<29, "3.5G"},
		{10 << 30, "10G"},
		{1 << 40, "1T"},
		{1 << 50, "1P"},
		{1 << 60, "1E"},
		{math.MaxUint64, "16E"},
	} {
		if got := formatSize(c.in); got != c.want {
			t.Errorf("formatSize(%d) = %q, want %q", c.in, got, c.want)
		}
	}
	// What formatSize prints without a fraction, parseSize reads back.
	for _, n := range []uint64{0, 1, 512, 1023, 4096, 64 << 10, 16 << 20, 10 << 30, 3 << 40, 7 << 50, 1 << 60, 15 << 60} {
		got, err := parseSize(formatSize(n))
		if err != nil || got != n {
			t.Errorf("parseSize(formatSize(%d) = %q) = %d, %v", n, formatSize(n), got, err)
		}
	}
}
