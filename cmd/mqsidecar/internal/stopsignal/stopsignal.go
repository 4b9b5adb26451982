// Package stopsignal catches SIGTERM and SIGINT from the moment it is initialized, which is
// early in the program's start-up: it imports nothing but context, os/signal and syscall,
// so Go initializes it right after those, before the heavy packages (broker clients,
// Prometheus, viper) whose initialization makes up most of a start. Until a program calls
// signal.Notify, the Go runtime's answer to SIGTERM is to die by the signal (exit status
// 143); the command imports this package so that a SIGTERM during start-up, such as a pod
// deleted right after it was created, becomes a clean stop (exit status 0) instead.
//
// What no process can catch is a signal that arrives before the Go runtime has installed its
// handlers, well under a millisecond after exec: the kernel's default action applies.
package stopsignal

import (
	"context"
	"os/signal"
	"syscall"
)

var ctx, stop = signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)

// Context is cancelled by the first SIGTERM or SIGINT received since the package was
// initialized (also one received before Context was called).
func Context() context.Context { return ctx }

// Stop stops catching the signals: from then on they have their default effect again.
func Stop() { stop() }
