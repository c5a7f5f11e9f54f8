package daemon

import (
	"net"
	"os"
)

// NotifySystemd sends state (e.g. "READY=1") to systemd's notify socket
// when the process runs under a Type=notify unit; elsewhere it does
// nothing. Errors are ignored: systemd then times the start out.
func NotifySystemd(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte(state))
}
