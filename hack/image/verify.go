package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// Promise is what a Dockerfile's final stage says about the image it builds.
type Promise struct {
	Base       string
	User       string
	WorkingDir string
	Entrypoint []string
	Cmd        []string
	Exposed    []string          // "9464/tcp"
	Labels     map[string]string // with build arguments substituted
	// Copies are the final stage's COPY destinations and the owner they get ("" = root).
	Copies map[string]string
}

// ParseDockerfile reads the final stage of a Dockerfile, substituting ${VERSION} and
// ${REVISION} as `docker build --build-arg` would.
func ParseDockerfile(src, version, revision string) (Promise, error) {
	var p Promise
	p.Labels, p.Copies = map[string]string{}, map[string]string{}
	// Continuation lines joined, comments and blank lines dropped.
	var lines []string
	var cur strings.Builder
	for _, l := range strings.Split(src, "\n") {
		t := strings.TrimSpace(l)
		if cur.Len() == 0 && (t == "" || strings.HasPrefix(t, "#")) {
			continue
		}
		if strings.HasSuffix(t, "\\") {
			cur.WriteString(strings.TrimSuffix(t, "\\") + " ")
			continue
		}
		cur.WriteString(t)
		lines = append(lines, cur.String())
		cur.Reset()
	}
	last := -1
	for i, l := range lines {
		if strings.HasPrefix(l, "FROM ") {
			last = i
		}
	}
	if last < 0 {
		return p, errors.New("no FROM")
	}
	p.Base = strings.Fields(lines[last])[1]
	subst := strings.NewReplacer("${VERSION}", version, "$VERSION", version, "${REVISION}", revision, "$REVISION", revision)
	for _, l := range lines[last+1:] {
		instr, rest, _ := strings.Cut(l, " ")
		rest = strings.TrimSpace(rest)
		var err error
		switch instr {
		case "USER":
			p.User = rest
		case "WORKDIR":
			p.WorkingDir = rest
		case "ENTRYPOINT":
			err = json.Unmarshal([]byte(rest), &p.Entrypoint)
		case "CMD":
			err = json.Unmarshal([]byte(rest), &p.Cmd)
		case "EXPOSE":
			for _, port := range strings.Fields(rest) {
				if !strings.Contains(port, "/") {
					port += "/tcp"
				}
				p.Exposed = append(p.Exposed, port)
			}
		case "LABEL":
			for _, m := range labelPair.FindAllStringSubmatch(rest, -1) {
				p.Labels[m[1]] = subst.Replace(m[2])
			}
		case "COPY":
			f := strings.Fields(rest)
			owner := ""
			for _, a := range f {
				if o, ok := strings.CutPrefix(a, "--chown="); ok {
					owner = o
				}
			}
			p.Copies[f[len(f)-1]] = owner
		case "ARG", "ENV", "RUN", "ADD", "VOLUME", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "ONBUILD":
			if instr != "ARG" {
				err = fmt.Errorf("%s in the final stage is not reproduced by this builder; teach it", instr)
			}
		}
		if err != nil {
			return p, fmt.Errorf("%s: %w", l, err)
		}
	}
	return p, nil
}

// labelPair matches key="value" in a LABEL instruction.
var labelPair = regexp.MustCompile(`([\w.\-]+)="([^"]*)"`)

// elfMachine is the ELF machine each architecture's binaries must have.
var elfMachine = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// Verify checks the OCI image layout at dir against the Dockerfile: one image per platform
// in the index, each with the Dockerfile's user, working directory, entrypoint, command,
// ports and labels, the files its COPY instructions put there (with their owners, the
// binaries built for that platform), and the distroless nonroot base it starts FROM.
func Verify(dir, dockerfile, version, revision string, platforms []string) error {
	want, err := ParseDockerfile(dockerfile, version, revision)
	if err != nil {
		return err
	}
	if want.Base != "gcr.io/distroless/static-debian12:nonroot" {
		return fmt.Errorf("the Dockerfile's base is %s; this builder makes distroless static nonroot", want.Base)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	var got []string
	var errs []error
	for _, d := range im.Manifests {
		if d.Platform == nil {
			errs = append(errs, fmt.Errorf("manifest %s has no platform", d.Digest))
			continue
		}
		plat := d.Platform.String()
		got = append(got, plat)
		img, err := idx.Image(d.Digest)
		if err != nil {
			return err
		}
		if err := verifyImage(img, *d.Platform, want); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", plat, err))
		}
	}
	if !slices.Equal(got, platforms) {
		errs = append(errs, fmt.Errorf("platforms in the index %v, want %v", got, platforms))
	}
	return errors.Join(errs...)
}

func verifyImage(img v1.Image, plat v1.Platform, want Promise) error {
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	var errs []error
	check := func(what string, got, want any) {
		if fmt.Sprint(got) != fmt.Sprint(want) {
			errs = append(errs, fmt.Errorf("%s = %v, the Dockerfile says %v", what, got, want))
		}
	}
	c := cf.Config
	check("config os/architecture", cf.OS+"/"+cf.Architecture, plat.OS+"/"+plat.Architecture)
	check("User", c.User, want.User)
	check("WorkingDir", c.WorkingDir, want.WorkingDir)
	check("Entrypoint", c.Entrypoint, want.Entrypoint)
	check("Cmd", c.Cmd, want.Cmd)
	check("ExposedPorts", slices.Sorted(maps.Keys(c.ExposedPorts)), slices.Sorted(slices.Values(want.Exposed)))
	check("Labels", c.Labels, want.Labels)
	if !slices.Contains(c.Env, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt") {
		errs = append(errs, errors.New("SSL_CERT_FILE is not set as in distroless"))
	}

	files, err := listFiles(img)
	if err != nil {
		return err
	}
	// Sorted, so that a report naming several files reads the same on every run.
	for _, dst := range slices.Sorted(maps.Keys(want.Copies)) {
		owner := want.Copies[dst]
		f, ok := files[strings.TrimPrefix(dst, "/")]
		if !ok {
			errs = append(errs, fmt.Errorf("%s (COPY in the Dockerfile) is not in the image", dst))
			continue
		}
		gotOwner := fmt.Sprintf("%d:%d", f.hdr.Uid, f.hdr.Gid)
		if owner == "" {
			owner = "0:0"
		}
		check(dst+" owner", gotOwner, owner)
		if f.hdr.Typeflag == tar.TypeReg {
			if f.hdr.Mode&0o111 == 0 {
				errs = append(errs, fmt.Errorf("%s is not executable", dst))
			}
			if m, err := machine(f.data); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", dst, err))
			} else if m != elfMachine[plat.Architecture] {
				errs = append(errs, fmt.Errorf("%s is built for %s, the image is %s", dst, m, plat.Architecture))
			}
		}
	}
	// The entrypoint must exist; the base must provide the user the image runs as.
	if len(c.Entrypoint) > 0 {
		if _, ok := files[strings.TrimPrefix(c.Entrypoint[0], "/")]; !ok {
			errs = append(errs, fmt.Errorf("the entrypoint %s is not in the image", c.Entrypoint[0]))
		}
	}
	if pw, ok := files["etc/passwd"]; !ok || !strings.Contains(string(pw.data), "\nnonroot:x:65532:65532:") {
		errs = append(errs, errors.New("/etc/passwd does not define nonroot (65532) as distroless does"))
	}
	for _, p := range []string{"etc/ssl/certs/ca-certificates.crt", "usr/share/zoneinfo/UTC", "tmp"} {
		if _, ok := files[p]; !ok {
			errs = append(errs, fmt.Errorf("/%s from the distroless base is missing", p))
		}
	}
	return errors.Join(errs...)
}

type entry struct {
	hdr  *tar.Header
	data []byte // regular files under usr/local/bin and etc only
}

// listFiles flattens the image's layers (no whiteouts are produced by this builder).
func listFiles(img v1.Image) (map[string]entry, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	files := map[string]entry{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, err
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				rc.Close()
				return nil, err
			}
			e := entry{hdr: h}
			name := strings.TrimSuffix(h.Name, "/")
			if h.Typeflag == tar.TypeReg && (strings.HasPrefix(name, "usr/local/bin/") || strings.HasPrefix(name, "etc/")) {
				if e.data, err = io.ReadAll(tr); err != nil {
					rc.Close()
					return nil, err
				}
			}
			files[name] = e
		}
		rc.Close()
	}
	return files, nil
}

func machine(b []byte) (elf.Machine, error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return 0, fmt.Errorf("not an ELF binary: %w", err)
	}
	return f.Machine, nil
}
