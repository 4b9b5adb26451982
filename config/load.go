package config

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/viper"

	"github.com/mqsidecar/mqsidecar/internal/textdist"
)

// Load reads the YAML file at path ("" = no file: defaults and environment only), applies
// MQSIDECAR_* environment overrides and then overrides, reads the *_file secrets of the
// selected source, and validates the result.
//
// Precedence, highest first: overrides, environment, file, Defaults(). overrides are flag
// values keyed by dotted key ("log.level"); every entry is applied, including empty strings,
// so the caller passes only the flags the user actually set. Values from the environment and
// from overrides are strings: lists are comma- or space-separated ("a:9092,b:9092"), durations need a
// unit ("10s"). An environment variable that is set but empty counts as set (to "").
//
// Every key is bound to its environment variable (EnvVar), so a key set only in the
// environment works even when the file does not mention it. An MQSIDECAR_* variable whose
// name starts with a known top-level key (MQSIDECAR_DELIVERY_..., MQSIDECAR_LOG_...) but
// matches no key is an error, so a typo is caught; other MQSIDECAR_* variables (such as the
// test suite's MQSIDECAR_E2E_*) are left alone.
//
// Secret files (source.kafka.sasl.password_file, source.rocketmq.secret_key_file,
// source.rabbitmq.url_file) are read only for the selected source.kind, and
// dedup.redis.password_file only with dedup.store: redis; their content, with
// trailing line breaks removed, replaces the inline value. Relative paths (secret files, TLS
// files, dedup.path) are relative to the working directory, not to the config file.
//
// A missing or unreadable file, or invalid YAML, is reported as a plain error naming the file
// (errors.Is(err, fs.ErrNotExist) works for a missing file). Everything else — unknown keys,
// wrong types, unreadable secret files, failed validation — is collected into one
// *ValidationError listing every problem, one per line, sorted by key. On error the returned
// Config is the zero value.
func Load(path string, overrides map[string]string) (Config, error) {
	s := getSchema()
	fileTree := &treeCapture{}
	v := viper.NewWithOptions(viper.WithDecoderRegistry(fileTree))
	v.AllowEmptyEnv(true)
	var probs []Problem
	add := func(key, format string, args ...any) {
		probs = append(probs, Problem{Key: key, Message: fmt.Sprintf(format, args...)})
	}

	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return Config{}, fmt.Errorf("config: cannot read config file: %w", err)
		}
		v.SetConfigType("yaml")
		if err := v.ReadConfig(bytes.NewReader(b)); err != nil {
			// viper wraps the YAML parser's error ("yaml: line 3: ...") in "While parsing
			// config:"; show the parser's own words next to the file name.
			var pe viper.ConfigParseError
			if errors.As(err, &pe) && pe.Unwrap() != nil {
				err = pe.Unwrap()
			}
			return Config{}, fmt.Errorf("config: %s: invalid YAML: %w", path, err)
		}
		checkTree(s, fileTree.tree, "", add)
	}

	for _, f := range s.leaves {
		if err := v.BindEnv(f.key, f.env); err != nil {
			return Config{}, fmt.Errorf("config: bind %s to %s: %w", f.key, f.env, err)
		}
	}
	checkEnv(s, os.Environ(), add)

	for _, k := range slices.Sorted(maps.Keys(overrides)) {
		lk := strings.ToLower(k)
		if _, ok := s.byKey[lk]; !ok {
			add(k, "unknown key (override)%s", suggest(lk, Keys()))
			continue
		}
		v.Set(lk, overrides[k])
	}

	cfg := Defaults()
	rv := reflect.ValueOf(&cfg).Elem()
	for _, f := range s.leaves {
		raw := v.Get(f.key)
		if raw == nil { // unset, or YAML null: keep the default
			continue
		}
		val, msg := convert(raw, f)
		if msg != "" {
			add(f.key, "%s", msg)
			continue
		}
		rv.FieldByIndex(f.index).Set(val)
	}

	readSecretFiles(&cfg, add)

	// A key that could not be decoded keeps its default, and a section of the wrong shape
	// keeps all of its defaults; validating those would report consequences, not causes.
	// Likewise a missing secret is the consequence of an unreadable *_file, and the checks of
	// the default kind's section are noise when source.kind itself was unreadable.
	caused := func(key string) bool {
		for _, p := range probs {
			if key == p.Key || strings.HasPrefix(key, p.Key+".") || p.Key == key+"_file" ||
				(p.Key == "source.kind" && strings.HasPrefix(key, "source.")) {
				return true
			}
		}
		return false
	}
	for _, p := range cfg.problems() {
		if !caused(p.Key) {
			probs = append(probs, p)
		}
	}
	if len(probs) > 0 {
		return Config{}, newValidationError(probs)
	}
	return cfg, nil
}

// treeCapture is a viper.DecoderRegistry that hands out viper's own decoders and keeps the
// map the file was decoded into. Viper offers no other view of the file as written: its
// AllSettings drops keys whose value is null or an empty mapping, and a typo such as
// "dead_leter: {}" must still be reported.
type treeCapture struct {
	tree map[string]any
}

func (c *treeCapture) Decoder(format string) (viper.Decoder, error) {
	d, err := viper.NewCodecRegistry().Decoder(format)
	if err != nil {
		return nil, err
	}
	return decoderFunc(func(b []byte, m map[string]any) error {
		c.tree = m // viper lower-cases the keys of m in place after decoding
		return d.Decode(b, m)
	}), nil
}

type decoderFunc func(b []byte, m map[string]any) error

func (f decoderFunc) Decode(b []byte, m map[string]any) error { return f(b, m) }

// checkTree reports every key of the parsed file that Config does not have, at any depth,
// and every section given something other than a mapping. Leaves are type-checked later by
// convert, against the merged value.
func checkTree(s *schema, tree map[string]any, prefix string, add func(key, format string, args ...any)) {
	for _, k := range slices.Sorted(maps.Keys(tree)) {
		key := k
		if prefix != "" {
			key = prefix + "." + k
		}
		val := tree[k]
		switch {
		case s.isLeaf(key):
			// A leaf: its value is decoded (and type-checked) with the merged configuration.
		case s.sections[key]:
			switch sub := val.(type) {
			case map[string]any:
				checkTree(s, sub, key, add)
			case nil:
				// "kafka:" with nothing under it: an empty section.
			default:
				add(key, "expected a mapping of keys under %s, got %s", key, describe(val, false))
			}
		default:
			add(key, "unknown key%s", suggest(key, siblings(s, prefix)))
		}
	}
}

// siblings returns the known keys (leaves and sections) directly under prefix.
func siblings(s *schema, prefix string) []string {
	var out []string
	consider := func(key string) {
		parent := ""
		if i := strings.LastIndexByte(key, '.'); i >= 0 {
			parent = key[:i]
		}
		if parent == prefix {
			out = append(out, key)
		}
	}
	for _, f := range s.leaves {
		consider(f.key)
	}
	for sec := range s.sections {
		consider(sec)
	}
	sort.Strings(out)
	return out
}

// checkEnv rejects MQSIDECAR_* variables that look like a key (they start with a known
// top-level key) but match none, e.g. MQSIDECAR_DELIVERY_MAX_INFLGHT. Variables outside the
// known top-level names (MQSIDECAR_E2E_KAFKA, MQSIDECAR_CONFIG, ...) belong to someone else.
func checkEnv(s *schema, environ []string, add func(key, format string, args ...any)) {
	var tops []string
	for _, f := range s.leaves {
		top, _, _ := strings.Cut(f.key, ".")
		tops = append(tops, EnvVar(top))
	}
	envNames := make([]string, 0, len(s.byEnv))
	for name := range s.byEnv {
		envNames = append(envNames, name)
	}
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		if _, ok := s.byEnv[name]; ok {
			continue
		}
		for _, top := range tops {
			if name == top || strings.HasPrefix(name, top+"_") {
				add(name, "unknown environment variable: it matches no configuration key%s", suggest(name, envNames))
				break
			}
		}
	}
}

// suggest returns " (did you mean X?)" for the candidate closest to got, or "" when none is
// close enough to be a plausible typo.
func suggest(got string, candidates []string) string {
	best, bestDist := "", math.MaxInt
	for _, c := range candidates {
		if d := textdist.Levenshtein(got, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	lastSeg := got[strings.LastIndexByte(got, '.')+1:]
	if best == "" || bestDist > max(2, len(lastSeg)/3) {
		return ""
	}
	return " (did you mean " + best + "?)"
}

// convert turns a raw value (from YAML: string, bool, int, float64, []any, map; from the
// environment or an override: always a string) into the Go type of f. It returns a message
// naming the expected type when that is impossible. The message never contains the value of a
// Secret.
func convert(raw any, f field) (reflect.Value, string) {
	t := f.typ
	switch {
	case t == durationType:
		return convertDuration(raw, f)
	case t.Kind() == reflect.String:
		if s, ok := raw.(string); ok {
			return reflect.ValueOf(s).Convert(t), ""
		}
		hint := ""
		if isNumber(raw) || isBool(raw) {
			hint = " (quote it in YAML, e.g. \"123\")"
		}
		return reflect.Value{}, "expected a string, got " + describe(raw, f.secret()) + hint
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String:
		var out []string
		switch x := raw.(type) {
		case string:
			out = splitList(x)
		case []string:
			out = x
		case []any:
			for i, e := range x {
				s, ok := e.(string)
				if !ok {
					return reflect.Value{}, fmt.Sprintf("expected a list of strings, but entry %d is %s", i+1, describe(e, f.secret()))
				}
				out = append(out, strings.TrimSpace(s))
			}
		default:
			return reflect.Value{}, "expected a list of strings (a YAML list, or comma- or space-separated in the environment), got " + describe(raw, f.secret())
		}
		if out == nil {
			out = []string{}
		}
		return reflect.ValueOf(out).Convert(t), ""
	case t.Kind() == reflect.Bool:
		switch x := raw.(type) {
		case bool:
			return reflect.ValueOf(x).Convert(t), ""
		case string:
			if b, err := strconv.ParseBool(strings.TrimSpace(x)); err == nil {
				return reflect.ValueOf(b).Convert(t), ""
			}
		}
		return reflect.Value{}, "expected a boolean (true or false), got " + describe(raw, f.secret())
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64:
		n, ok := toInt(raw)
		if !ok {
			return reflect.Value{}, "expected an integer, got " + describe(raw, f.secret())
		}
		out := reflect.New(t).Elem()
		if out.OverflowInt(n) {
			return reflect.Value{}, "integer out of range: " + describe(raw, f.secret())
		}
		out.SetInt(n)
		return out, ""
	case t.Kind() == reflect.Float64:
		var x float64
		switch n := raw.(type) {
		case float64:
			x = n
		case string:
			p, err := strconv.ParseFloat(strings.TrimSpace(n), 64)
			if err != nil {
				return reflect.Value{}, "expected a number, got " + describe(raw, f.secret())
			}
			x = p
		default:
			i, ok := toInt(raw)
			if !ok || isString(raw) {
				return reflect.Value{}, "expected a number, got " + describe(raw, f.secret())
			}
			x = float64(i)
		}
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return reflect.Value{}, "expected a finite number, got " + describe(raw, f.secret())
		}
		return reflect.ValueOf(x).Convert(t), ""
	}
	// Only reachable when a field of an unsupported type is added to config.go; the tests
	// load every key, so this cannot ship unnoticed.
	return reflect.Value{}, fmt.Sprintf("internal error: config field of type %s is not supported by the loader", t)
}

const durationHint = `a duration with a unit, such as "10s", "500ms" or "1m30s"`

func convertDuration(raw any, f field) (reflect.Value, string) {
	switch x := raw.(type) {
	case time.Duration:
		return reflect.ValueOf(x), ""
	case string:
		s := strings.TrimSpace(x)
		d, err := time.ParseDuration(s)
		if err == nil {
			return reflect.ValueOf(d), ""
		}
		if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
			return reflect.Value{}, fmt.Sprintf("expected %s, got %q: a bare number is ambiguous, add a unit", durationHint, x)
		}
		return reflect.Value{}, fmt.Sprintf("expected %s, got %q", durationHint, x)
	}
	if n, ok := toInt(raw); ok && n == 0 {
		return reflect.ValueOf(time.Duration(0)), "" // 0 needs no unit
	}
	if isNumber(raw) {
		return reflect.Value{}, fmt.Sprintf("expected %s, got the bare number %v: it is ambiguous (seconds? milliseconds?), add a unit", durationHint, raw)
	}
	return reflect.Value{}, "expected " + durationHint + ", got " + describe(raw, f.secret())
}

// toInt accepts whole numbers of any numeric type and decimal strings.
func toInt(raw any) (int64, bool) {
	switch n := raw.(type) {
	case int:
		return int64(n), true
	case int8:
		return int64(n), true
	case int16:
		return int64(n), true
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case uint:
		return int64(n), n <= math.MaxInt64
	case uint8:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint32:
		return int64(n), true
	case uint64:
		return int64(n), n <= math.MaxInt64
	case float64:
		if n == math.Trunc(n) && n >= math.MinInt64 && n < math.MaxInt64 {
			return int64(n), true
		}
	case string:
		i, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64)
		return i, err == nil
	}
	return 0, false
}

func isNumber(raw any) bool {
	switch raw.(type) {
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, float32, float64:
		return true
	}
	return false
}

func isBool(raw any) bool   { _, ok := raw.(bool); return ok }
func isString(raw any) bool { _, ok := raw.(string); return ok }

// describe names what raw is, for an error message. It shows the value itself only when
// secret is false (and abbreviates long strings).
func describe(raw any, secret bool) string {
	switch x := raw.(type) {
	case string:
		if secret {
			return "a string"
		}
		if len(x) > 60 {
			x = x[:57] + "..."
		}
		return strconv.Quote(x)
	case bool:
		if secret {
			return "a boolean"
		}
		return fmt.Sprintf("the boolean %v", x)
	case []any, []string:
		return "a list"
	case map[string]any, map[any]any:
		return "a mapping"
	case nil:
		return "nothing"
	}
	if isNumber(raw) {
		if secret {
			return "a number"
		}
		return fmt.Sprintf("the number %v", raw)
	}
	return fmt.Sprintf("a value of type %T", raw)
}

// splitList splits a list given as one string (environment, overrides) at commas and
// white space, dropping empty entries: "a:1,b:2", "a:1, b:2" and "a:1 b:2" are the same
// list. No list key holds values with spaces (addresses, topic names).
func splitList(s string) []string {
	out := []string{}
	for _, p := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || unicode.IsSpace(r) }) {
		out = append(out, p)
	}
	return out
}

// readSecretFiles replaces inline secrets of the selected source (and of the Redis dedup
// store, when it is the one in use) with the content of their *_file, if named. Only what is
// in use is read: an unused section must not fail startup.
func readSecretFiles(c *Config, add func(key, format string, args ...any)) {
	read := func(key, path string, dst *Secret) {
		if path == "" {
			return
		}
		b, err := os.ReadFile(path)
		if err != nil {
			add(key, "cannot read secret file: %v", err)
			return
		}
		*dst = Secret(strings.TrimRight(string(b), "\r\n"))
	}
	if c.Dedup.Enabled && c.Dedup.Store == "redis" {
		read("dedup.redis.password_file", c.Dedup.Redis.PasswordFile, &c.Dedup.Redis.Password)
	}
	switch c.Source.Kind {
	case "kafka":
		read("source.kafka.sasl.password_file", c.Source.Kafka.SASL.PasswordFile, &c.Source.Kafka.SASL.Password)
	case "rocketmq":
		read("source.rocketmq.secret_key_file", c.Source.RocketMQ.SecretKeyFile, &c.Source.RocketMQ.SecretKey)
	case "rabbitmq":
		read("source.rabbitmq.url_file", c.Source.RabbitMQ.URLFile, &c.Source.RabbitMQ.URL)
		read("source.rabbitmq.management_password_file", c.Source.RabbitMQ.ManagementPasswordFile, &c.Source.RabbitMQ.ManagementPassword)
	}
}
