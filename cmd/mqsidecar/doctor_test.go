package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The doctor's exit statuses without a broker: 2 for a bad configuration or flag, 1 with the
// reason when the broker cannot be reached (and, with --output json, an error object).
func TestDoctorExitStatus(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	unreachable := write("down.yaml", `
source:
  kind: kafka
  kafka: {brokers: ["127.0.0.1:1"], group: g, topics: [orders]}
app: {url: "http://127.0.0.1:8080/in"}
`)
	bad := write("bad.yaml", "source: {kind: nats}\napp: {url: \"http://127.0.0.1:8080/in\"}\n")
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"doctor", "--config", bad}, 2, "source.kind"},
		{[]string{"doctor", "--config", unreachable, "--output", "yaml"}, 2, "--output: must be table or json"},
		{[]string{"doctor", "--config", unreachable}, 1, "could not connect: kafka: unreachable: brokers 127.0.0.1:1"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), tc.args, &stdout, &stderr); code != tc.code || !strings.Contains(stderr.String(), tc.stderr) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr.String(), tc.code, tc.stderr)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"doctor", "-c", unreachable, "-o", "json"}, &stdout, &stderr); code != 1 {
		t.Fatalf("json, unreachable: exit %d", code)
	}
	var got struct {
		Kind, Verdict, Error string
		Exit                 int `json:"exit_code"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil || got.Kind != "kafka" || got.Exit != 1 || !strings.Contains(got.Error, "could not connect") {
		t.Errorf("json, unreachable: %q (%v)", stdout.String(), err)
	}
}
