//go:build unix

package dedup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const crashEnv = "MQSIDECAR_DEDUP_CRASH_CHILD"

// TestCrashChild is the child half of TestCrashRecovery; it does nothing unless run by it.
// It writes IDs with PutSync from several goroutines, prints "ok <id>" after each returned,
// keeps more Puts in the queue, and SIGKILLs itself mid-stream.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashEnv)
	if path == "" {
		t.Skip("helper process for TestCrashRecovery")
	}
	s, err := Open(path, Options{TTL: time.Hour, MaxBatch: 64, Logger: quiet})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	go func() { _ = s.Run(context.Background()) }() // killed -9, never stopped
	var (
		acked atomic.Int64
		outMu sync.Mutex
		wg    sync.WaitGroup
	)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id := fmt.Sprintf("g%d-%d", g, i)
				// An async Put that is likely still queued at the kill: it may or may not
				// survive, but must not damage the file.
				s.Put("async-"+id, Entry{State: InFlight, Attempts: i}, nil)
				if err := s.PutSync(id, Entry{State: Completed, Attempts: i}); err != nil {
					fmt.Fprintln(os.Stderr, "child put:", err)
					os.Exit(4)
				}
				outMu.Lock()
				_, _ = os.Stdout.WriteString("ok " + id + "\n")
				outMu.Unlock()
				if acked.Add(1) == 3000 {
					_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				}
			}
		}()
	}
	wg.Wait()
}

func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a subprocess")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	for round := range 2 { // the second round crashes a store that was itself recovered
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashEnv+"="+path)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var acked []string
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "ok "); ok {
				acked = append(acked, id)
			}
		}
		err = cmd.Wait()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child ended with %v, want killed by SIGKILL", round, err)
		}
		if len(acked) < 3000 {
			t.Fatalf("round %d: child acknowledged only %d puts", round, len(acked))
		}

		s := openT(t, path, Options{TTL: time.Hour})
		for _, id := range acked {
			e := mustGet(t, s, id)
			if e.State != Completed {
				t.Fatalf("round %d: %s was PutSync'ed before the kill but is %+v after reopen", round, id, e)
			}
		}
		mustPut(t, s, fmt.Sprint("after-crash-", round), Entry{State: Completed})
		st := s.Stats()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %d acknowledged puts all recovered; store has ~%d entries, %d bytes",
			round, len(acked), st.Entries, st.FileBytes)
	}
}
