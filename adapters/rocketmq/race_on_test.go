//go:build race

package rocketmq

// raceEnabled: see race_off_test.go.
const raceEnabled = true
