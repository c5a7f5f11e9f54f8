package metrics

import "errors"

var (
	// ErrBadAddress is wrapped when a listen address is not host:port.
	ErrBadAddress = errors.New("bad metrics listen address")

	// ErrNotLoopback is wrapped when a listen address is not a loopback
	// address and ServeOptions.AllowRemote is not set: metrics name every
	// volume on the host.
	ErrNotLoopback = errors.New("metrics listen address is not loopback")
)
