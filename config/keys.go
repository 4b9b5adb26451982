package config

import (
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// EnvPrefix starts every environment variable that overrides a configuration key.
const EnvPrefix = settings.EnvPrefix

// field describes one leaf key of Config: where it lives in the struct and what it holds.
type field struct {
	key   string       // dotted, lower case, e.g. "delivery.backoff.initial"
	env   string       // e.g. "MQSIDECAR_DELIVERY_BACKOFF_INITIAL"
	index []int        // reflect.Value.FieldByIndex path from Config
	typ   reflect.Type // the leaf's Go type
}

// secret reports whether the value must never be echoed (in errors, logs or summaries).
func (f field) secret() bool { return f.typ == secretType }

// schema is the reflection of Config's mapstructure tags, computed once. Every other part of
// the package (env binding, unknown-key detection, decoding, redaction) derives from it, so a
// field added to config.go is automatically loadable, overridable and checked.
type schema struct {
	leaves   []field          // declaration order
	byKey    map[string]field // leaf key → field
	sections map[string]bool  // dotted keys of nested structs ("source", "source.kafka", ...)
	byEnv    map[string]string
}

var (
	secretType   = reflect.TypeFor[Secret]()
	durationType = reflect.TypeFor[time.Duration]()

	schemaOnce sync.Once
	theSchema  *schema
)

func getSchema() *schema {
	schemaOnce.Do(func() {
		s := &schema{byKey: map[string]field{}, sections: map[string]bool{}, byEnv: map[string]string{}}
		s.walk(reflect.TypeFor[Config](), "", nil)
		theSchema = s
	})
	return theSchema
}

func (s *schema) walk(t reflect.Type, prefix string, index []int) {
	for i := range t.NumField() {
		sf := t.Field(i)
		tag, _, _ := strings.Cut(sf.Tag.Get("mapstructure"), ",")
		if !sf.IsExported() || tag == "" || tag == "-" {
			continue
		}
		key := tag
		if prefix != "" {
			key = prefix + "." + tag
		}
		idx := append(slices.Clone(index), i)
		if sf.Type.Kind() == reflect.Struct {
			s.sections[key] = true
			s.walk(sf.Type, key, idx)
			continue
		}
		f := field{key: key, env: EnvVar(key), index: idx, typ: sf.Type}
		s.leaves = append(s.leaves, f)
		s.byKey[key] = f
		s.byEnv[f.env] = key
	}
}

// Keys returns every known dotted configuration key ("source.kafka.brokers",
// "delivery.backoff.initial", ...) in the declaration order of Config. It is derived from the
// mapstructure tags by reflection, so it cannot drift from the structs. Sections (keys whose
// value is a mapping, such as "source.kafka") are not included; only leaves are.
func Keys() []string {
	s := getSchema()
	out := make([]string, len(s.leaves))
	for i, f := range s.leaves {
		out[i] = f.key
	}
	return out
}

// EnvVar returns the environment variable that overrides key: EnvPrefix followed by the key
// upper-cased with "." replaced by "_" ("log.level" → "MQSIDECAR_LOG_LEVEL").
func EnvVar(key string) string { return settings.EnvVar(key) }

func (s *schema) isLeaf(key string) bool { _, ok := s.byKey[key]; return ok }
