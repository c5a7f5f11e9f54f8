package metadata

import (
	"fmt"
	"strings"
)

// MaxNameLen is the longest volume or snapshot name, in bytes.
const MaxNameLen = 128

// refSep separates a volume from a snapshot in a reference: VOL@SNAP.
const refSep = "@"

// digestPrefix is the only digest algorithm obdvol names layers with.
const digestPrefix = "sha256:"

// ValidateName reports whether name may name a volume or a snapshot. kind
// ("volume" or "snapshot") only shapes the message. A name is 1 to 128
// bytes of [A-Za-z0-9._-], starting with a letter or digit; so it is never
// "", "." or "..", never holds '/' or '@', and is safe as one path
// element under --root. The error wraps ErrInvalidName and says what is
// allowed.
func ValidateName(kind, name string) error {
	bad := func(why string) error {
		return fmt.Errorf("%s name %q %s: want 1 to %d characters of A-Z a-z 0-9 . _ -, starting with a letter or digit: %w",
			kind, name, why, MaxNameLen, ErrInvalidName)
	}
	switch {
	case name == "":
		return bad("is empty")
	case len(name) > MaxNameLen:
		return bad(fmt.Sprintf("is %d characters long", len(name)))
	case !isAlnum(name[0]):
		return bad("does not start with a letter or digit")
	}
	for i := 1; i < len(name); i++ {
		if c := name[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return bad(fmt.Sprintf("holds %q", rune(c)))
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// ParseRef splits a reference into its volume and snapshot names: "vol"
// gives (vol, ""), "vol@snap" gives (vol, snap). Both parts are validated.
// An empty part ("vol@", "@snap") or a second '@' is an error wrapping
// ErrInvalidName.
func ParseRef(ref string) (vol, snap string, err error) {
	vol, snap, hasSnap := strings.Cut(ref, refSep)
	if err := ValidateName("volume", vol); err != nil {
		return "", "", fmt.Errorf("reference %q: %w", ref, err)
	}
	if !hasSnap {
		return vol, "", nil
	}
	if err := ValidateName("snapshot", snap); err != nil {
		return "", "", fmt.Errorf("reference %q: %w", ref, err)
	}
	return vol, snap, nil
}

// Ref formats a reference: vol alone when snap is "", else vol@snap. It is
// the inverse of ParseRef and the key of a snapshot record.
func Ref(vol, snap string) string {
	if snap == "" {
		return vol
	}
	return vol + refSep + snap
}

// ValidateDigest reports whether d is a layer digest: "sha256:" followed by
// 64 lower-case hex digits. The error wraps ErrInvalid.
func ValidateDigest(d string) error {
	hex, ok := strings.CutPrefix(d, digestPrefix)
	if !ok || len(hex) != 64 {
		return fmt.Errorf("digest %q: want sha256: and 64 lower-case hex digits: %w", d, ErrInvalid)
	}
	for i := 0; i < len(hex); i++ {
		if c := hex[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("digest %q: want sha256: and 64 lower-case hex digits: %w", d, ErrInvalid)
		}
	}
	return nil
}
