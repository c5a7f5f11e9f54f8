package metadata

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	long := strings.Repeat("a", MaxNameLen)
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"db", true},
		{"a", true},
		{"0", true},
		{"vol-1.2_x", true},
		{"A.b-C_9", true},
		{long, true},
		{long + "a", false},
		{"", false},
		{".", false},
		{"..", false},
		{"../x", false},
		{"..x", false},
		{".hidden", false},
		{"-flag", false},
		{"_x", false},
		{"a/b", false},
		{"/abs", false},
		{"a\\b", false},
		{"a@b", false},
		{"a b", false},
		{"a\x00b", false},
		{"a\n", false},
		{"é", false},
		{"a:b", false},
	} {
		err := ValidateName("volume", tc.name)
		if tc.ok && err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", tc.name, err)
		}
		if !tc.ok {
			if !errors.Is(err, ErrInvalidName) {
				t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", tc.name, err)
			} else if !strings.Contains(err.Error(), "want 1 to 128 characters") {
				t.Errorf("ValidateName(%q) = %v, want a message saying what is allowed", tc.name, err)
			}
		}
	}
	if err := ValidateName("snapshot", ""); err == nil || !strings.HasPrefix(err.Error(), "snapshot name") {
		t.Errorf("kind not in message: %v", err)
	}
}

func TestParseRef(t *testing.T) {
	for _, tc := range []struct {
		ref, vol, snap string
		ok             bool
	}{
		{"db", "db", "", true},
		{"db@nightly", "db", "nightly", true},
		{"a.b@c-d", "a.b", "c-d", true},
		{"db@", "", "", false},
		{"@snap", "", "", false},
		{"@", "", "", false},
		{"", "", "", false},
		{"a@b@c", "", "", false},
		{"a@@b", "", "", false},
		{"../x@y", "", "", false},
		{"x@../y", "", "", false},
		{"x@a/b", "", "", false},
	} {
		vol, snap, err := ParseRef(tc.ref)
		if tc.ok {
			if err != nil || vol != tc.vol || snap != tc.snap {
				t.Errorf("ParseRef(%q) = %q, %q, %v; want %q, %q, nil", tc.ref, vol, snap, err, tc.vol, tc.snap)
			}
			if got := Ref(vol, snap); got != tc.ref {
				t.Errorf("Ref(%q, %q) = %q, want %q", vol, snap, got, tc.ref)
			}
			continue
		}
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("ParseRef(%q) = %q, %q, %v; want ErrInvalidName", tc.ref, vol, snap, err)
		}
	}
}

func TestValidateDigest(t *testing.T) {
	good := "sha256:" + strings.Repeat("0123456789abcdef", 4)
	if err := ValidateDigest(good); err != nil {
		t.Fatalf("ValidateDigest(%q) = %v", good, err)
	}
	for _, d := range []string{
		"",
		"sha256:",
		strings.TrimPrefix(good, "sha256:"),
		"sha512:" + strings.Repeat("0123456789abcdef", 4),
		"SHA256:" + strings.Repeat("0123456789abcdef", 4),
		"sha256:" + strings.Repeat("0123456789ABCDEF", 4),
		good + "0",
		good[:len(good)-1],
		good[:len(good)-1] + "g",
		"sha256:../../../../etc/passwd" + strings.Repeat("a", 35),
	} {
		if err := ValidateDigest(d); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateDigest(%q) = %v, want ErrInvalid", d, err)
		}
	}
}
