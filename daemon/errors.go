package daemon

import "errors"

// Errors callers can test with errors.Is.
var (
	// ErrNotRunning: no daemon listens on the root's control socket.
	ErrNotRunning = errors.New("no obdvol daemon is running")
	// ErrRunning: another daemon holds the root's daemon lock.
	ErrRunning = errors.New("an obdvol daemon is already running")
	// ErrBadRequest: a request (or a listen spec) that cannot be served
	// as given: unknown operation, invalid name, bad spec.
	ErrBadRequest = errors.New("bad request")
	// ErrPeer: a control connection from a user other than the daemon's.
	ErrPeer = errors.New("refused: the control socket answers only its owner")
)

// RemoteError is an error the daemon (or a volume's server) reported:
// its message and the kind cmd/obdvol's errorKind gave it there.
type RemoteError struct {
	Msg  string
	Kind string
}

func (e *RemoteError) Error() string { return e.Msg }
