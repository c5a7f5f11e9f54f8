package repo

import (
	"errors"
	"io"
	"net/http"
	"sync/atomic"

	"oras.land/oras-go/v2/registry/remote/errcode"
)

// ErrUnauthorized is wrapped when a registry refuses the credentials (or
// their absence) with 401 Unauthorized, after one re-authentication.
var ErrUnauthorized = errors.New("registry refused the credentials")

// IsUnauthorized reports whether err is a registry's 401: ErrUnauthorized,
// or an error response of oras-go (a push, pull or token request) with
// status 401.
func IsUnauthorized(err error) bool {
	var er *errcode.ErrorResponse
	return errors.Is(err, ErrUnauthorized) || errors.As(err, &er) && er.StatusCode == http.StatusUnauthorized
}

// pushAgainOn401 runs push, and once more if the registry answered 401.
// oras-go sends a monolithic upload's PUT with the token of its POST and
// does not re-authenticate it (it cannot rewind a streamed body), so a
// token that expires between the two (a long push) fails the PUT; the
// second push reopens the content and starts with a fresh token.
func pushAgainOn401(push func() error) error {
	err := push()
	if IsUnauthorized(err) {
		err = push()
	}
	return err
}

// readCount counts the bytes read through it (atomically: an HTTP
// transport may still read a request body after the response came).
type readCount struct {
	io.ReadCloser
	n atomic.Int64
}

func (r *readCount) Read(b []byte) (int, error) {
	n, err := r.ReadCloser.Read(b)
	r.n.Add(int64(n))
	return n, err
}
