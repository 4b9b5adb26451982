package dedup

import (
	"errors"
	"syscall"
)

// platformDiskFull recognises Windows' own "disk full" errors (ERROR_HANDLE_DISK_FULL 39,
// ERROR_DISK_FULL 112), which the portable errno values do not match.
func platformDiskFull(err error) bool {
	return errors.Is(err, syscall.Errno(39)) || errors.Is(err, syscall.Errno(112))
}
