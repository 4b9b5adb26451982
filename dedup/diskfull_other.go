//go:build !windows

package dedup

// platformDiskFull: ENOSPC and EDQUOT (checked by diskFull) are the only "disk full" errors.
func platformDiskFull(error) bool { return false }
