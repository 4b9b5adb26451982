package metrics

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// writeMethods change a collector's value.
var writeMethods = map[string]bool{"Set": true, "Inc": true, "Dec": true, "Add": true, "Sub": true, "Observe": true,
	"SetToCurrentTime": true, "Reset": true, "DeleteLabelValues": true, "Delivery": true}

// writers returns, per Metrics field name, the packages (directories) of the module whose
// non-test sources write it: a call of a write method on .Field, .Field[...] or
// .Field.WithLabelValues(...).
func writers(t *testing.T, root string, fields map[string]bool) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		pkg, _ := filepath.Rel(root, filepath.Dir(path))
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || !writeMethods[sel.Sel.Name] {
				return true
			}
			x := sel.X
			for { // strip .WithLabelValues(...) and [...]
				if c, ok := x.(*ast.CallExpr); ok {
					if s, ok := c.Fun.(*ast.SelectorExpr); ok && s.Sel.Name == "WithLabelValues" {
						x = s.X
						continue
					}
				}
				if ix, ok := x.(*ast.IndexExpr); ok {
					x = ix.X
					continue
				}
				break
			}
			if s, ok := x.(*ast.SelectorExpr); ok && fields[s.Sel.Name] && !slices.Contains(out[s.Sel.Name], pkg) {
				out[s.Sel.Name] = append(out[s.Sel.Name], pkg)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestOneWriterPerMetric: every collector of Metrics is written by one package at most
// (package metrics itself counts as the writer of what its methods write for their
// callers). mqsidecar_app_ready used to be set by the sidecar's health check and by the
// gate's push results, each from its own view.
func TestOneWriterPerMetric(t *testing.T) {
	fields := map[string]bool{}
	for f := range reflect.TypeFor[Metrics]().Fields() {
		if f.IsExported() && f.Name != "Registry" {
			fields[f.Name] = true
		}
	}
	w := writers(t, "..", fields)
	if len(w["AppReady"]) == 0 || len(w["Inflight"]) == 0 {
		t.Fatalf("the scan found no writer of AppReady or Inflight (%v): it does not see the sources", w)
	}
	for name, pkgs := range w {
		if len(pkgs) > 1 {
			t.Errorf("%s is written by %d packages: %v; one must own it (and the others tell it)", name, len(pkgs), pkgs)
		}
	}
}
