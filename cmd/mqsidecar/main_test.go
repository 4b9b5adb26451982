package main

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
)

// TestNoKubernetesPackages: the sidecar runs next to every application pod; the Kubernetes
// API packages (the injector's) belong in cmd/mqsidecar-injector, not here.
func TestNoKubernetesPackages(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "k8s.io/") || strings.HasSuffix(pkg, "/injector") {
			t.Errorf("cmd/mqsidecar depends on %s", pkg)
		}
	}
}

// TestInjectMoved: the former `mqsidecar inject` names its replacement and exits 2.
func TestInjectMoved(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"inject", "--listen=:8443", "--sidecar-image=x:1"}, &stdout, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "mqsidecar-injector") {
		t.Errorf("exit %d, stderr %q; want 2 and a pointer to mqsidecar-injector", code, stderr.String())
	}
}

func TestVersionAndExitStatus(t *testing.T) {
	defer func(v string) { version = v }(version)
	version = "v1.2.3-test"
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"version"}, &stdout, &stderr); code != 0 || stdout.String() != "mqsidecar v1.2.3-test\n" {
		t.Errorf("version: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	stdout.Reset()
	if code := run(context.Background(), []string{"--version"}, &stdout, &stderr); code != 0 || stdout.String() != "mqsidecar v1.2.3-test\n" {
		t.Errorf("--version: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	stderr.Reset()
	if code := run(context.Background(), []string{"run", "--bogus"}, &stdout, &stderr); code != 2 || stderr.String() != "mqsidecar: unknown flag: --bogus\n" {
		t.Errorf("bad flag: exit %d, stderr %q; want 2", code, stderr.String())
	}
}

// TestHelp: help screens list plain flags. (pflag v1.1.0 printed every boolean, --help
// included, as "--help[=true|false]"; go.mod pins v1.0.x.)
func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"run", "--help"}, {"config", "validate", "--help"}} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), args, &stdout, &stderr)
		out := stdout.String()
		if code != 0 || !strings.Contains(out, "-h, --help ") || strings.Contains(out, "[=true|false]") {
			t.Errorf("%v: exit %d, stderr %q, stdout:\n%s", args, code, stderr.String(), out)
		}
	}
	var stdout, stderr bytes.Buffer
	if run(context.Background(), []string{"--help"}, &stdout, &stderr); !strings.Contains(stdout.String(), "-v, --version ") {
		t.Errorf("--help does not list --version:\n%s", stdout.String())
	}
}
