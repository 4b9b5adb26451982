package dedup

import (
	"errors"
	"strings"
	"syscall"
)

// ErrDiskFull is wrapped by Ready's error while commits are paused because the file system
// has no room (ENOSPC, or EDQUOT: a quota), and by the done callbacks' error of records that
// were still unwritten when Close gave up on a full disk.
var ErrDiskFull = errors.New("no space left for the dedup store")

// diskFull reports whether err says the file system has no room for the commit: from
// bbolt's page writes and fdatasync (the errno is wrapped), or from its file growth, whose
// error keeps only the errno's text ("file resize error: ...", "file sync error: ...").
func diskFull(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || platformDiskFull(err) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, syscall.ENOSPC.Error()) || strings.Contains(msg, syscall.EDQUOT.Error())
}
