package demo

import (
	"bytes"
	"context"
	"regexp"
	"testing"
	"time"
)

// TestDemo runs the newcomer's first command end to end (smaller) and checks its summary:
// everything delivered, duplicates filtered, nothing lost.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	err := Run(context.Background(), Options{Out: &out, Messages: 600, DuplicateRate: 0.2, FailRate: 0.2, Timeout: 45 * time.Second})
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		`delivered\s+600 unique IDs answered 2xx`,
		`silent duplicates\s+0`,
		`lost\s+0`,
		`deduplicated\s+[1-9][0-9]* records`,
		`pushes\s+[0-9]+ \([1-9][0-9]* retried`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}
