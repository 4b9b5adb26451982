// Package testfs gives tests a real small file system, to prove what happens when a disk is
// full: a tmpfs mounted for the test. Mounting needs root (CAP_SYS_ADMIN), as CI has;
// elsewhere the test is skipped, saying why.
// The helpers exist on Linux only.
package testfs
