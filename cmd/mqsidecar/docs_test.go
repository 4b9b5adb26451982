package main

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqsidecar/mqsidecar/metrics"
)

// TestREADMEListsEveryMetric: the README's metric table names every metric the sidecar
// defines (metrics.Metrics), so operators can rely on it.
func TestREADMEListsEveryMetric(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	m := reflect.ValueOf(metrics.New()).Elem()
	var names []string
	for i := range m.NumField() {
		c, ok := m.Field(i).Interface().(prometheus.Collector)
		if !ok || m.Type().Field(i).Name == "Registry" {
			continue
		}
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			if sub := fqName.FindStringSubmatch(d.String()); sub != nil {
				names = append(names, sub[1])
			}
		}
	}
	if len(names) < 10 {
		t.Fatalf("found only %d metrics in metrics.Metrics: %v", len(names), names)
	}
	for _, name := range names {
		if !strings.Contains(string(readme), "`"+name+"`") && !strings.Contains(string(readme), "`"+name+"{") {
			t.Errorf("README.md does not list the metric %s", name)
		}
	}
}

// TestDocsStayInTheRepository: the README and docs/ link the guarantees in the repository,
// never a file beside it.
func TestDocsStayInTheRepository(t *testing.T) {
	files := []string{filepath.Join("..", "..", "README.md")}
	docs, _ := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	files = append(files, docs...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "../shared") {
			t.Errorf("%s links outside the repository (../shared)", f)
		}
	}
	readme, _ := os.ReadFile(files[0])
	if !strings.Contains(string(readme), "(docs/guarantees.md)") {
		t.Error("README.md does not link docs/guarantees.md")
	}
	if _, err := os.Stat(filepath.Join("..", "..", "docs", "guarantees.md")); err != nil {
		t.Error(err)
	}
}
