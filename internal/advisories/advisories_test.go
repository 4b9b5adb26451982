// Package advisories holds one test: the module graph has no version of a module that a
// published advisory affects, for the modules go.mod raises above what the dependencies
// require (minimum version selection lets the main module require the fixed version).
// govulncheck is the complete check; this one runs offline and keeps the raises in place.
package advisories

import (
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// advisories lists, per module, the affected ranges [introduced, fixed) of the advisories
// go.mod works around ("" introduced = every earlier version).
var advisories = []struct {
	module, id string
	affected   [][2]string
}{
	// The RocketMQ client requires v1.4.0.
	{"github.com/sirupsen/logrus", "CVE-2025-65637 / GO-2025-4188 (Entry.Writer DoS)",
		[][2]string{{"", "v1.8.3"}, {"v1.9.0", "v1.9.1"}, {"v1.9.2", "v1.9.3"}}},
}

func TestNoModuleVersionWithAKnownAdvisory(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Path}} {{.Version}}", "all").Output()
	if err != nil {
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			t.Fatalf("go list -m all: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list -m all: %v", err)
	}
	versions := map[string]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		if path, v, ok := strings.Cut(line, " "); ok {
			versions[path] = v
		}
	}
	if len(versions) < 10 {
		t.Fatalf("go list -m all listed only %d modules:\n%s", len(versions), out)
	}
	for _, a := range advisories {
		v, ok := versions[a.module]
		if !ok {
			continue // no longer in the graph: nothing to raise
		}
		for _, r := range a.affected {
			if (r[0] == "" || compare(v, r[0]) >= 0) && compare(v, r[1]) < 0 {
				t.Errorf("%s %s is affected by %s (fixed in %s): raise it in go.mod", a.module, v, a.id, r[1])
			}
		}
	}
}

// compare orders two "vMAJOR.MINOR.PATCH[-pre][+build]" versions by their numbers; a
// pre-release sorts before its release.
func compare(a, b string) int {
	na, pa := split(a)
	nb, pb := split(b)
	for i := range na {
		if na[i] != nb[i] {
			if na[i] < nb[i] {
				return -1
			}
			return 1
		}
	}
	switch {
	case pa == pb:
		return 0
	case pa && !pb:
		return -1
	default:
		return 1
	}
}

func split(v string) (nums [3]int, pre bool) {
	v, _, _ = strings.Cut(strings.TrimPrefix(v, "v"), "+")
	v, _, pre = strings.Cut(v, "-")
	for i, s := range strings.SplitN(v, ".", 3) {
		nums[i], _ = strconv.Atoi(s)
	}
	return nums, pre
}
