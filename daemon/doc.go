// Package daemon is obdvol's host daemon: one process per --root that owns
// every active volume of that root (ublk devices and NBD exports) through
// one volume.Manager, so that all of them share one decompressed-chunk
// cache (and the manager's per-chain index). The CLI reaches it through a
// control socket; cmd/obdvol only parses, wires and prints.
//
// # Glossary
//
//   - host: the Host value, the daemon's state: its manager, its active
//     volumes, its NBD listeners.
//   - active volume: a volume the host has opened and serves, as a ublk
//     device (/dev/ublkbN) or as an export of an NBD listener.
//   - NBD group: one NBD listener (a listen spec, unix:PATH or
//     tcp:HOST:PORT) and the volumes it exports; one serve request makes
//     one group, the first volume is its default export.
//   - device record: metadata.Volume.Device, where a volume is served now
//     and by which process (liveness is the volume's lock, see volume
//     package Device).
//   - activation record: metadata.Volume.Activation, how the volume should
//     be served whenever the daemon runs (a persistent activation).
//   - stable name: the symlink <devdir>/<volume> to the volume's current
//     /dev/ublkbN (devdir is /dev/obdvol by default).
//   - root identity: --root/root.id, 16 random bytes made once; the tags
//     of the root's ublk devices derive from it.
//   - control socket: --root/run/daemon.sock (requests naming any volume)
//     and --root/run/<vol>.sock (requests about that volume, answered by
//     whichever process owns it: the daemon or a foreground serve).
//
// # Invariants
//
//  1. One daemon per root: Open takes an flock on --root/run/daemon.lock
//     and holds it for the process's life; a second daemon fails with
//     ErrRunning naming the first one's PID.
//  2. Control sockets are created by internal/unixsock (mode 0600, never
//     replacing a live socket) and every connection's peer is checked with
//     SO_PEERCRED: a uid other than the daemon's own euid is refused before
//     its request is read.
//  3. A volume's device record is written after its device or export
//     exists and while the host holds the volume's lock, and cleared before
//     the host closes the volume (as every obdvol server does), so that
//     other processes judge liveness by the lock.
//  4. An activation record is written with the device record, in one
//     catalogue transaction, when a persistent activate or serve succeeds,
//     and removed by deactivate in the transaction that clears the device
//     record; a non-persistent activate removes an older one.
//  5. Operations on one volume are serialized (a per-name lock); the host's
//     maps are guarded by a mutex that is never held across I/O.
//  6. A stop (SIGTERM) flushes every volume; ublk devices are left in the
//     kernel (their device records stay) for the next daemon to reattach
//     with user recovery, NBD listeners are closed and their records
//     cleared. A crash leaves the same state, less the final flush.
//  7. At start the host reattaches every ublk device whose record names a
//     dead server, starts a new device for a persistent ublk activation
//     whose kernel device is gone, and listens again for persistent NBD
//     exports; the failure of one volume is logged and the others go on.
//  8. A kernel device is reattached only if it is the volume's: it carries
//     the volume's tag (ublkTag of the root's identity and the volume
//     name, set at ADD_DEV), or, untagged, names the record's PID as its
//     server; otherwise it is left alone (ublk.ErrNotOurs).
//  9. An online grow (Resize) changes nothing until every check passed
//     (active here, not smaller, ublk UPDATE_SIZE available); the volume
//     grows before its ublk device.
package daemon
