package main

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the child get SIGTERM when the bench dies, so a killed bench leaves
// no broker or store behind.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
