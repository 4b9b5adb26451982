package config

import (
	"slices"
	"testing"

	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// TestBrokerSections: every section of Source is a source.kind whose settings are a
// settings.Broker, and each selects its own section.
func TestBrokerSections(t *testing.T) {
	if got, want := Kinds(), []string{"kafka", "rocketmq", "rabbitmq"}; !slices.Equal(got, want) {
		t.Fatalf("Kinds() = %v, want %v", got, want)
	}
	c := Defaults()
	for _, k := range Kinds() {
		c.Source.Kind = k
		f := c.Source.section()
		if !f.IsValid() {
			t.Fatalf("%s: no section", k)
		}
		if _, ok := f.Interface().(settings.Broker); !ok {
			t.Errorf("%s: %s is not a settings.Broker", k, f.Type())
		}
		if _, ok := f.Addr().Interface().(settings.SecretFiler); !ok {
			t.Errorf("%s: *%s is not a settings.SecretFiler", k, f.Type())
		}
	}
	c.Source.Kind = "nats"
	if c.Source.broker() != nil {
		t.Error("an unknown kind selects a section")
	}
}
