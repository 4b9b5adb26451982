package dedup

import (
	"os"
	"syscall"
)

// fdatasync is what bbolt's commit calls on Linux.
func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
