//go:build !unix

package ackgate

import "time"

// cpuTime is not measured here: the benchmark then reports no cpu-µs/push.
func cpuTime() time.Duration { return 0 }
