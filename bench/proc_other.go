//go:build !linux

package main

import "os/exec"

// dieWithParent: only Linux has a parent-death signal; elsewhere the bench's own cleanup
// stops its children.
func dieWithParent(*exec.Cmd) {}
