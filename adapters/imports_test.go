package adapters_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestAdaptersImportNeitherConfigNorMetrics: a broker's folder holds everything of that
// broker, and reports through adapters.Events; it depends on neither the configuration
// loader (config, viper) nor the metrics.
func TestAdaptersImportNeitherConfigNorMetrics(t *testing.T) {
	forbidden := []string{
		"github.com/mqsidecar/mqsidecar/config",
		"github.com/mqsidecar/mqsidecar/metrics",
		"github.com/spf13/viper",
	}
	files, err := filepath.Glob("*/*.go")
	if err != nil {
		t.Fatal(err)
	}
	top, _ := filepath.Glob("*.go")
	files = append(files, top...)
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range forbidden {
				if path == bad || strings.HasPrefix(path, bad+"/") {
					t.Errorf("%s imports %s", f, path)
				}
			}
		}
	}
	if checked < 10 {
		t.Fatalf("checked only %d files", checked)
	}
}
