package main

import (
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

var platforms = []string{"linux/amd64", "linux/arm64"}

// dist cross-compiles a small static program per platform under the names of the two
// binaries, as `make release` lays them out (the real ones take minutes to cross-compile;
// `make image` runs the same checks on them). withArch maps a platform's directory to the
// architecture actually compiled, to plant a wrong-platform binary.
func dist(t *testing.T, withArch map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(src, "go.mod"), []byte("module standin\n\ngo 1.26\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n\nfunc main() { println(\"stand-in\") }\n"), 0o644))
	for _, p := range platforms {
		goos, arch, _ := strings.Cut(p, "/")
		sub := goos + "_" + arch
		if a, ok := withArch[sub]; ok {
			arch = a
		}
		out := filepath.Join(dir, sub)
		cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(out, "mqsidecar"), ".")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+goos, "GOARCH="+arch, "GOFLAGS=", "GOWORK=off")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build for %s: %v\n%s", p, err, b)
		}
		b, err := os.ReadFile(filepath.Join(out, "mqsidecar"))
		must(t, err)
		must(t, os.WriteFile(filepath.Join(out, "mqsidecar-injector"), b, 0o755))
	}
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func dockerfile(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../Dockerfile")
	must(t, err)
	return string(b)
}

func options(d string) Options {
	return Options{Dist: d, Platforms: platforms, Version: "v9.9.9", Revision: "0123abcd",
		CABundle: "testdata/ca.pem", Created: time.Unix(1700000000, 0).UTC()}
}

func build(t *testing.T, o Options) (string, string) {
	t.Helper()
	idx, err := Build(o)
	must(t, err)
	out := filepath.Join(t.TempDir(), "layout")
	must(t, WriteLayout(out, idx))
	d, err := idx.Digest()
	must(t, err)
	return out, d.String()
}

// TestImageMatchesDockerfile: the engine-less image has, for amd64 and arm64, the user,
// working directory, entrypoint, command, port and labels of the Dockerfile's final stage,
// the files its COPY instructions add (owners, binaries for the right machine) and a
// distroless-equivalent base; and each kind of difference is caught.
func TestImageMatchesDockerfile(t *testing.T) {
	d := dist(t, nil)
	out, digest := build(t, options(d))
	df := dockerfile(t)
	if err := Verify(out, df, "v9.9.9", "0123abcd", platforms); err != nil {
		t.Fatalf("image and Dockerfile differ:\n%v", err)
	}

	// The same inputs give the same image (fixed times, sorted entries).
	if _, again := build(t, options(d)); again != digest {
		t.Errorf("rebuild gave index %s, first %s: not reproducible", again, digest)
	}

	// What the Dockerfile says is checked: each change of it makes the image differ.
	changes := []struct{ old, new, want string }{
		{"USER 65532:65532", "USER 1000:1000", "User = 65532:65532, the Dockerfile says 1000:1000"},
		{`ENTRYPOINT ["/usr/local/bin/mqsidecar"]`, `ENTRYPOINT ["/usr/local/bin/other"]`, "Entrypoint"},
		{`CMD ["run", "--config", "/etc/mqsidecar/config.yaml"]`, `CMD ["run"]`, "Cmd"},
		{"WORKDIR /var/lib/mqsidecar", "WORKDIR /data", "WorkingDir"},
		{"EXPOSE 9464", "EXPOSE 9090", "ExposedPorts"},
		{`licenses="Apache-2.0"`, `licenses="MIT"`, "Labels"},
		{`COPY --from=build --chown=65532:65532 /out/var-lib-mqsidecar /var/lib/mqsidecar`,
			`COPY --from=build --chown=1:1 /out/var-lib-mqsidecar /var/lib/mqsidecar`, "/var/lib/mqsidecar owner = 65532:65532"},
		{`/out/mqsidecar-injector /usr/local/bin/mqsidecar-injector`, `/out/mqsidecar-injector /usr/local/bin/injector`,
			"/usr/local/bin/injector (COPY in the Dockerfile) is not in the image"},
	}
	for _, c := range changes {
		if !strings.Contains(df, c.old) {
			t.Fatalf("the Dockerfile no longer has %q: update this test", c.old)
		}
		err := Verify(out, strings.Replace(df, c.old, c.new, 1), "v9.9.9", "0123abcd", platforms)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Dockerfile with %q: error %v, want one containing %q", c.new, err, c.want)
		}
	}
	if err := Verify(out, df, "v1.0.0", "0123abcd", platforms); err == nil || !strings.Contains(err.Error(), "Labels") {
		t.Errorf("another version label: error %v", err)
	}
	if err := Verify(out, df, "v9.9.9", "0123abcd", []string{"linux/amd64"}); err == nil || !strings.Contains(err.Error(), "platforms in the index") {
		t.Errorf("a missing platform: error %v", err)
	}
}

// TestWrongPlatformBinaryIsCaught: amd64 binaries in the arm64 image (what the Dockerfile's
// defaulted TARGETARCH shipped) fail the check.
func TestWrongPlatformBinaryIsCaught(t *testing.T) {
	out, _ := build(t, options(dist(t, map[string]string{"linux_arm64": "amd64"})))
	err := Verify(out, dockerfile(t), "v9.9.9", "0123abcd", platforms)
	if err == nil || !strings.Contains(err.Error(), "linux/arm64: /usr/local/bin/mqsidecar is built for EM_X86_64, the image is arm64") {
		t.Fatalf("error = %v, want the arm64 image's amd64 binaries named", err)
	}
	if strings.Contains(err.Error(), "linux/amd64:") {
		t.Errorf("the amd64 image is fine, but: %v", err)
	}
}

// TestPush: the index pushed to a registry (go-containerregistry's in-memory one) is the
// one built, both platforms included.
func TestPush(t *testing.T) {
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	idx, err := Build(options(dist(t, nil)))
	must(t, err)
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/team/mqsidecar:v9.9.9")
	must(t, err)
	must(t, remote.WriteIndex(ref, idx))
	got, err := remote.Index(ref)
	must(t, err)
	want, _ := idx.Digest()
	if d, _ := got.Digest(); d != want {
		t.Errorf("pulled index %s, pushed %s", d, want)
	}
	im, err := got.IndexManifest()
	must(t, err)
	if len(im.Manifests) != 2 || im.Manifests[1].Platform.Architecture != "arm64" {
		t.Errorf("manifests = %+v", im.Manifests)
	}
}
