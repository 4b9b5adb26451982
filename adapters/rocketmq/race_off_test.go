//go:build !race

package rocketmq

// raceEnabled reports a -race build. The client's orderly consumer polls its process
// queue's tree map without holding the queue's lock (consumer.(*processQueue).takeMessages
// against putMessage), which the race detector reports on every orderly run; orderly-mode
// e2e tests therefore run in a build without -race.
const raceEnabled = false
