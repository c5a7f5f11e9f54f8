package repo

import (
	"errors"
	"net/http"

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
