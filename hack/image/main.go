// Command image builds the mqsidecar container image without a container engine: the same
// content as the Dockerfile's final stage (distroless static nonroot base, both static
// binaries, the data directory owned by 65532, the same user, entrypoint, command, port and
// labels), one image per platform, written as an OCI image layout (an index of the
// platforms) and optionally pushed to a registry.
//
// The base is made here rather than pulled: gcr.io/distroless/static-debian12:nonroot holds
// /etc/passwd and /etc/group with root, nobody and nonroot (65532), /etc/nsswitch.conf,
// /home/nonroot, a world-writable /tmp, the Debian CA bundle and tzdata, and sets PATH and
// SSL_CERT_FILE. The binaries are static (CGO_ENABLED=0), so nothing else is needed. The CA
// bundle is the build machine's (--ca-bundle); the zone files come from the Go toolchain's
// zoneinfo.zip.
//
//	make release          # dist/linux_amd64/..., dist/linux_arm64/...
//	cd hack/image && go run . --dist ../../dist --out ../../dist/image --version v0.1.0 \
//	    --revision $(git rev-parse HEAD) [--push registry.example.com/team/mqsidecar:v0.1.0]
//
// After building, the layout is checked against the Dockerfile (verify.go): a difference
// between what the Dockerfile promises and what was built fails the command.
package main

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Source is the project's repository (org.opencontainers.image.source).
const Source = "https://github.com/mqsidecar/mqsidecar"

// NonRoot is distroless's nonroot user and group.
const NonRoot = 65532

// Options say what to build.
type Options struct {
	// Dist holds <os>_<arch>/mqsidecar and <os>_<arch>/mqsidecar-injector per platform.
	Dist string
	// Platforms, e.g. linux/amd64.
	Platforms []string
	// Version and Revision fill the version and revision labels (the Dockerfile's VERSION
	// and REVISION build arguments).
	Version, Revision string
	// CABundle is the PEM file installed as /etc/ssl/certs/ca-certificates.crt.
	CABundle string
	// Created is the images' creation time and every file's mtime (reproducible builds).
	Created time.Time
}

func main() {
	var o Options
	var platforms, out, push, dockerfile, created string
	flag.StringVar(&o.Dist, "dist", "../../dist", "directory with <os>_<arch>/{mqsidecar,mqsidecar-injector}")
	flag.StringVar(&platforms, "platforms", "linux/amd64,linux/arm64", "comma-separated platforms")
	flag.StringVar(&o.Version, "version", "dev", "org.opencontainers.image.version")
	flag.StringVar(&o.Revision, "revision", "unknown", "org.opencontainers.image.revision (the git commit; the Dockerfile's REVISION default is unknown)")
	flag.StringVar(&o.CABundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "CA certificates (PEM) for /etc/ssl/certs/ca-certificates.crt")
	flag.StringVar(&created, "created", "", "creation time, RFC 3339 (default: $SOURCE_DATE_EPOCH, else the Unix epoch)")
	flag.StringVar(&out, "out", "../../dist/image", "OCI image layout directory to write (replaced)")
	flag.StringVar(&dockerfile, "dockerfile", "../../Dockerfile", "the Dockerfile the result is checked against")
	flag.StringVar(&push, "push", "", "also push the image index to this reference (credentials from ~/.docker/config.json)")
	flag.Parse()
	o.Platforms = strings.Split(platforms, ",")
	if err := run(o, created, out, dockerfile, push); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(o Options, created, out, dockerfile, push string) error {
	var err error
	if o.Created, err = creationTime(created, os.Getenv("SOURCE_DATE_EPOCH")); err != nil {
		return err
	}
	idx, err := Build(o)
	if err != nil {
		return err
	}
	if err := WriteLayout(out, idx); err != nil {
		return err
	}
	df, err := os.ReadFile(dockerfile)
	if err != nil {
		return err
	}
	if err := Verify(out, string(df), o.Version, o.Revision, o.Platforms); err != nil {
		return fmt.Errorf("the built image does not match %s: %w", dockerfile, err)
	}
	d, _ := idx.Digest()
	fmt.Printf("wrote %s (OCI image layout, index %s, %s), checked against %s\n", out, d, strings.Join(o.Platforms, " "), dockerfile)
	if push != "" {
		ref, err := name.ParseReference(push)
		if err != nil {
			return err
		}
		if err := remote.WriteIndex(ref, idx, remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return fmt.Errorf("push %s: %w", ref, err)
		}
		fmt.Printf("pushed %s@%s\n", ref, d)
	}
	return nil
}

func creationTime(flagValue, sourceDateEpoch string) (time.Time, error) {
	switch {
	case flagValue != "":
		return time.Parse(time.RFC3339, flagValue)
	case sourceDateEpoch != "":
		s, err := strconv.ParseInt(sourceDateEpoch, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
		}
		return time.Unix(s, 0).UTC(), nil
	}
	return time.Unix(0, 0).UTC(), nil
}

// WriteLayout replaces dir with an OCI image layout holding idx.
func WriteLayout(dir string, idx v1.ImageIndex) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	_, err := layout.Write(dir, idx)
	return err
}

// Build assembles the multi-platform image index.
func Build(o Options) (v1.ImageIndex, error) {
	if len(o.Platforms) == 0 {
		return nil, errors.New("no platforms")
	}
	base, err := baseLayer(o)
	if err != nil {
		return nil, err
	}
	var adds []mutate.IndexAddendum
	for _, p := range o.Platforms {
		plat, err := v1.ParsePlatform(p)
		if err != nil {
			return nil, err
		}
		img, err := platformImage(o, plat, base)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: plat}})
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	return mutate.AppendManifests(idx, adds...), nil
}

// Labels are the image's labels: the Dockerfile's LABEL instruction.
func Labels(version, revision string) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "mqsidecar",
		"org.opencontainers.image.description": "Consumes Kafka, RocketMQ or RabbitMQ and pushes each message to a local app over HTTP",
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.revision":    revision,
		"org.opencontainers.image.source":      Source,
		"org.opencontainers.image.licenses":    "Apache-2.0",
	}
}

func platformImage(o Options, plat *v1.Platform, base v1.Layer) (v1.Image, error) {
	dir := filepath.Join(o.Dist, plat.OS+"_"+plat.Architecture)
	var files []file
	for _, name := range []string{"mqsidecar", "mqsidecar-injector"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		files = append(files, file{path: "usr/local/bin/" + name, mode: 0o755, data: b})
	}
	// The data directory: the Dockerfile copies it from the build stage with --chown.
	files = append(files,
		file{path: "var/lib/mqsidecar/", mode: 0o755, uid: NonRoot, gid: NonRoot},
		file{path: "var/lib/mqsidecar/data/", mode: 0o755, uid: NonRoot, gid: NonRoot})
	app, err := layer(files, o.Created)
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, base, app)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = plat.OS, plat.Architecture, plat.Variant
	cf.Created = v1.Time{Time: o.Created}
	cf.Author = ""
	cf.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", NonRoot, NonRoot),
		WorkingDir: "/var/lib/mqsidecar",
		Entrypoint: []string{"/usr/local/bin/mqsidecar"},
		Cmd:        []string{"run", "--config", "/etc/mqsidecar/config.yaml"},
		// distroless's environment.
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
		},
		ExposedPorts: map[string]struct{}{"9464/tcp": {}},
		Labels:       Labels(o.Version, o.Revision),
	}
	return mutate.ConfigFile(img, cf)
}

// baseLayer is the distroless static nonroot equivalent, the same for every platform.
func baseLayer(o Options) (v1.Layer, error) {
	ca, err := os.ReadFile(o.CABundle)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	files := []file{
		{path: "etc/", mode: 0o755},
		{path: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\n" +
			"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n" +
			"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{path: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n")},
		{path: "etc/nsswitch.conf", mode: 0o644, data: []byte("hosts: files dns\n")},
		{path: "etc/ssl/", mode: 0o755},
		{path: "etc/ssl/certs/", mode: 0o755},
		{path: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: ca},
		{path: "home/", mode: 0o755},
		{path: "home/nonroot/", mode: 0o700, uid: NonRoot, gid: NonRoot},
		{path: "root/", mode: 0o700},
		{path: "tmp/", mode: 0o1777},
		{path: "usr/", mode: 0o755},
		{path: "usr/local/", mode: 0o755},
		{path: "usr/local/bin/", mode: 0o755},
		{path: "usr/share/", mode: 0o755},
		{path: "usr/share/zoneinfo/", mode: 0o755},
		{path: "var/", mode: 0o755},
		{path: "var/lib/", mode: 0o755},
	}
	zones, err := zoneFiles()
	if err != nil {
		return nil, err
	}
	return layer(append(files, zones...), o.Created)
}

// zoneFiles are the Go toolchain's time zone files, under usr/share/zoneinfo.
func zoneFiles() ([]file, error) {
	zr, err := zip.OpenReader(filepath.Join(runtime.GOROOT(), "lib", "time", "zoneinfo.zip"))
	if err != nil {
		return nil, fmt.Errorf("tzdata: %w", err)
	}
	defer zr.Close()
	dirs := map[string]bool{}
	var files []file
	for _, f := range zr.File {
		if f.FileInfo().IsDir() {
			continue
		}
		rc, err := f.Open()
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return nil, err
		}
		p := "usr/share/zoneinfo/" + f.Name
		for d := filepath.Dir(p); d != "usr/share/zoneinfo"; d = filepath.Dir(d) {
			dirs[d+"/"] = true
		}
		files = append(files, file{path: p, mode: 0o644, data: b})
	}
	for d := range dirs {
		files = append(files, file{path: d, mode: 0o755})
	}
	return files, nil
}

// file is one tar entry; a path ending in "/" is a directory.
type file struct {
	path     string
	mode     int64
	uid, gid int
	data     []byte
}

// layer makes a gzipped tar layer of files, sorted (parents first) with fixed times, so the
// same input gives the same digest.
func layer(files []file, mtime time.Time) (v1.Layer, error) {
	sort.Slice(files, func(i, j int) bool { return files[i].path < files[j].path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.path, Mode: f.mode, Uid: f.uid, Gid: f.gid, ModTime: mtime, Format: tar.FormatPAX}
		if strings.HasSuffix(f.path, "/") {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
}
