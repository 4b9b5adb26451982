//go:build unix

package appclient

import (
	"errors"
	"syscall"
)

// alive reports whether the app has not closed pc while it sat idle. It peeks at the
// socket without blocking: EOF or unexpected bytes mean the connection is unusable.
func alive(pc *pconn) bool {
	if pc.br.Buffered() > 0 {
		return false // bytes nobody asked for: the framing is lost
	}
	sc, ok := pc.c.(syscall.Conn)
	if !ok {
		return true // TLS: no cheap check; a failure becomes a counted retry
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	_ = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// Only "would block" means open and quiet; EOF (no error, 0 bytes), data or any
		// other error means unusable.
		ok = errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK)
		return true // never wait for readability
	})
	return ok
}
