//go:build !linux

package dedup

import "os"

// fdatasync: bbolt calls fsync (File.Sync) where there is no fdatasync.
func fdatasync(f *os.File) error { return f.Sync() }
