package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/mqsidecar/mqsidecar/cmd/mqsidecar/internal/stopsignal"
)

// goList returns the import paths of the packages cmd/mqsidecar links with the given build
// tags.
func goList(t *testing.T, tags string) []string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-tags", tags, "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps -tags %q: %v", tags, err)
	}
	return strings.Fields(string(out))
}

// TestNodemoLinksNoKfake: production builds (-tags nodemo: make build, the Dockerfile) do
// not carry the demo's in-process Kafka; the default build (go run ./cmd/mqsidecar demo)
// still does.
func TestNodemoLinksNoKfake(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	isDemo := func(pkg string) bool {
		return strings.Contains(pkg, "/kfake") || pkg == "github.com/mqsidecar/mqsidecar/demo"
	}
	for _, pkg := range goList(t, "nodemo") {
		if isDemo(pkg) {
			t.Errorf("with -tags nodemo, cmd/mqsidecar depends on %s", pkg)
		}
	}
	var demoPkgs []string
	for _, pkg := range goList(t, "") {
		if isDemo(pkg) {
			demoPkgs = append(demoPkgs, pkg)
		}
	}
	if len(demoPkgs) != 2 {
		t.Errorf("without tags, cmd/mqsidecar links %v; want the demo and kfake (mqsidecar demo)", demoPkgs)
	}
}

// productionTags are the build tags of production builds (make build, make release, the
// Dockerfile, the benchmarks): nodemo leaves the demo out; grpcnotrace leaves out gRPC's
// golang.org/x/net/trace, whose HTML pages (html/template, registered by its init) would
// switch off the linker's dead code elimination (TestBinaryKeepsDeadCodeElimination).
var productionTags = []string{"nodemo", "grpcnotrace"}

// setsTag reports whether a go build command line sets tag (-tags nodemo, -tags=a,nodemo, ...).
func setsTag(cmdline, tag string) bool {
	return regexp.MustCompile(`(^|\s)-tags[= ]['"]?([\w.]+,)*` + tag + `(,[\w.]+)*['"]?(\s|$)`).MatchString(cmdline)
}

// TestProductionBuildsUseNodemo checks statically that the image's build command (the RUN
// after the Dockerfile's "# build-command" marker, the one hack/check-dockerfile.sh runs)
// and `make build` build the sidecar with the production tags (-tags nodemo,grpcnotrace).
func TestProductionBuildsUseNodemo(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join("..", "..", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// The instruction after the marker, continuation lines joined.
	var run strings.Builder
	_, after, ok := strings.Cut(read("Dockerfile"), "\n# build-command")
	if ok {
		lines := strings.Split(after, "\n")[1:]
		for _, l := range lines {
			l = strings.TrimSpace(l)
			run.WriteString(strings.TrimSuffix(l, "\\") + " ")
			if !strings.HasSuffix(l, "\\") {
				break
			}
		}
	}
	if cmd := run.String(); !strings.HasPrefix(cmd, "RUN ") || !strings.Contains(cmd, "go build") {
		t.Errorf("Dockerfile: no RUN ... go build after the '# build-command' marker: %q", cmd)
	} else {
		for _, tag := range productionTags {
			if !setsTag(cmd, tag) {
				t.Errorf("Dockerfile: the build command does not set the %s tag: %q", tag, cmd)
			}
		}
	}

	// The recipe of the Makefile's build target.
	var recipe []string
	inBuild := false
	for _, l := range strings.Split(read("Makefile"), "\n") {
		switch {
		case strings.HasPrefix(l, "build:"):
			inBuild = true
		case inBuild && strings.HasPrefix(l, "\t"):
			recipe = append(recipe, l)
		case inBuild:
			inBuild = false
		}
	}
	var found bool
	for _, l := range recipe {
		if strings.Contains(l, "./cmd/mqsidecar ") || strings.HasSuffix(l, "./cmd/mqsidecar") {
			found = true
			for _, tag := range productionTags {
				if !setsTag(l, tag) {
					t.Errorf("Makefile: `make build` builds the sidecar without the %s tag: %q", tag, l)
				}
			}
		}
	}
	if !found {
		t.Errorf("Makefile: no line of the build target builds ./cmd/mqsidecar: %q", recipe)
	}
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	// buildOut is the build's output: the linker's reachability graph (-dumpdep), or why
	// the build failed.
	buildOut []byte
)

// productionBinary builds cmd/mqsidecar the way make build does (static, the production
// tags), once per test run, keeping the linker's reachability graph (linkerGraph).
func productionBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mqsidecar-cmd-test-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "mqsidecar")
		// -dumpdep prints the linker's reachability graph, "caller -> callee" per line, and
		// marks a callee that calls reflect's method lookup with " <ReflectMethod>".
		cmd := exec.Command(goTool, "build", "-tags", strings.Join(productionTags, ","), "-ldflags=-dumpdep", "-o", builtBin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build -tags %s: %v\n%s", strings.Join(productionTags, ","), buildErr, buildOut[:min(len(buildOut), 2000)])
	}
	return builtBin
}

// linkerGraph is the linker's reachability graph of productionBinary's build.
func linkerGraph(t *testing.T) string {
	t.Helper()
	productionBinary(t)
	return string(buildOut)
}

func TestMain(m *testing.M) {
	// This test binary links package main and thus stopsignal; give SIGINT/SIGTERM their
	// default effect back, so an interrupted `go test` ends.
	stopsignal.Stop()
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// TestNodemoBinary: in a production build, `mqsidecar demo` says that this build has no
// demo and exits 2, and --version works like the version subcommand.
func TestNodemoBinary(t *testing.T) {
	bin := productionBinary(t)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "demo", "--messages", "5")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 || !strings.Contains(stderr.String(), "this build has no demo") {
		t.Errorf("demo in a nodemo build: %v, stdout %q, stderr %q; want exit 2 saying there is no demo", err, stdout.String(), stderr.String())
	}
	flag, err1 := exec.Command(bin, "--version").Output()
	sub, err2 := exec.Command(bin, "version").Output()
	if err1 != nil || err2 != nil || !strings.HasPrefix(string(flag), "mqsidecar ") || string(flag) != string(sub) {
		t.Errorf("--version: %q (%v); version: %q (%v); want the same line", flag, err1, sub, err2)
	}
}

// TestBinaryKeepsDeadCodeElimination: in a production build nothing reachable calls
// reflect's Method or MethodByName (text/template does, to evaluate fields). Where one does,
// the linker must keep every exported method of every type converted to an interface:
// go-redis's hundreds of commands, gRPC's and protobuf's methods, ... With cobra's
// SetVersionTemplate and gRPC's x/net/trace that was 11 MB more binary (35 MB instead of
// 24), mapped from the page cache as the process touched it: ~3 MB more peak RSS in
// `make bench`. The failure names the chain of calls from main that reaches it.
func TestBinaryKeepsDeadCodeElimination(t *testing.T) {
	callers := map[string][]string{}
	var marked []string
	for _, line := range strings.Split(linkerGraph(t), "\n") {
		from, to, ok := strings.Cut(line, " -> ")
		if !ok {
			continue
		}
		from = strings.TrimSuffix(from, " <ReflectMethod>")
		if fn, ok := strings.CutSuffix(to, " <ReflectMethod>"); ok {
			to = fn
			marked = append(marked, fn)
		}
		callers[to] = append(callers[to], from)
	}
	if len(callers) < 1000 {
		t.Fatalf("the linker printed no reachability graph (%d edges): has -dumpdep changed?", len(callers))
	}
	for _, fn := range marked {
		t.Errorf("%s calls reflect's method lookup, which switches off dead code elimination; reached by:\n  %s",
			fn, strings.Join(chainFromMain(callers, fn), "\n  -> "))
	}
}

// chainFromMain is the shortest chain of calls from a root of the program (main, an init) to
// fn, root first.
func chainFromMain(callers map[string][]string, fn string) []string {
	next := map[string]string{fn: ""}
	queue := []string{fn}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		if len(callers[n]) == 0 || n == "main.main" {
			var chain []string
			for ; n != ""; n = next[n] { // next leads from a caller towards fn
				chain = append(chain, n)
			}
			return chain
		}
		for _, c := range callers[n] {
			if _, seen := next[c]; !seen {
				next[c] = n
				queue = append(queue, c)
			}
		}
	}
	return []string{fn}
}
