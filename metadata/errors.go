package metadata

import "errors"

// Sentinel errors. Every error the package returns that a caller may want to
// act on wraps exactly one of these with %w and adds context (the volume,
// snapshot, digest or catalogue path), so test with errors.Is, never by
// comparing messages.
var (
	// ErrNotFound: the named volume, snapshot, layer or intent has no record.
	ErrNotFound = errors.New("not found")

	// ErrExists: CreateVolume or CreateSnapshot found the name taken.
	ErrExists = errors.New("already exists")

	// ErrInvalidName: a volume or snapshot name, or a VOL@SNAP reference,
	// breaks the naming rules (see ValidateName).
	ErrInvalidName = errors.New("invalid name")

	// ErrInvalid: a record handed to a Put or Create method breaks a rule
	// other than naming: a malformed digest, a size that is not a multiple
	// of the block size, an unknown layer state.
	ErrInvalid = errors.New("invalid record")

	// ErrBusy: the catalogue file's lock was not obtained within
	// Catalog.Timeout because another process (or handle) holds it.
	ErrBusy = errors.New("catalogue is busy: another obdvol process holds it")

	// ErrSchema: the catalogue was written by a newer obdvol whose schema
	// version this one does not know.
	ErrSchema = errors.New("unsupported catalogue schema")

	// ErrCorrupt: a stored value does not decode, or decodes to a record
	// that breaks the rules its writer enforced, or the file is not a
	// bbolt database.
	ErrCorrupt = errors.New("catalogue corrupt")
)
