package config

import (
	"log/slog"
	"reflect"
	"strings"
	"time"

	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// RedactURL returns raw with everything between "://" and the last "@" replaced by
// "xxxxx", safe to log (settings.RedactURL).
func RedactURL(raw string) string { return settings.RedactURL(raw) }

// A field tagged log:"url" holds a URL that may carry a password in its user info: LogValue
// shows it with its user info redacted (RedactURL), which keeps the host and vhost visible
// to an operator. A field tagged log:"addrs" holds a host:port list: validation refuses
// entries with user info, but the summary may be logged for a configuration that failed
// validation, so each entry goes through RedactURL too.

// LogValue implements slog.LogValuer: the configuration as nested groups, safe to log.
// Secrets show as "<redacted>" (URLs as the URL with its password redacted), durations as
// Go duration strings ("10s"), and of the three source sections only the selected one
// appears. It is meant for the single "configuration loaded" line at startup.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(logAttrs(reflect.ValueOf(c), "", c.Source.Kind)...)
}

func logAttrs(v reflect.Value, prefix, kind string) []slog.Attr {
	t := v.Type()
	var out []slog.Attr
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
		if prefix == "source" && sf.Type.Kind() == reflect.Struct && tag != kind {
			continue // an unused broker section is noise
		}
		fv := v.Field(i)
		logTag := sf.Tag.Get("log")
		switch {
		case sf.Type == secretType:
			s := Secret(fv.String())
			if logTag == "url" && s != "" {
				out = append(out, slog.String(tag, RedactURL(s.Reveal())))
			} else {
				out = append(out, slog.String(tag, s.String()))
			}
		case logTag == "url":
			out = append(out, slog.String(tag, RedactURL(fv.String())))
		case logTag == "addrs" && sf.Type.Kind() == reflect.Slice:
			addrs := make([]string, fv.Len())
			for j := range addrs {
				addrs[j] = RedactURL(fv.Index(j).String())
			}
			out = append(out, slog.Any(tag, addrs))
		case sf.Type == durationType:
			out = append(out, slog.String(tag, time.Duration(fv.Int()).String()))
		case sf.Type.Kind() == reflect.Struct:
			out = append(out, slog.Attr{Key: tag, Value: slog.GroupValue(logAttrs(fv, key, kind)...)})
		default:
			out = append(out, slog.Any(tag, fv.Interface()))
		}
	}
	return out
}
