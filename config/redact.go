package config

import (
	"log/slog"
	"net/url"
	"reflect"
	"strings"
	"time"
)

// RedactURL returns raw with the password of its user info replaced by "xxxxx"
// ("amqp://guest:xxxxx@host:5672/"), safe to log. A string that does not parse as a URL but
// contains "@" is replaced entirely by "<redacted>", since its user info cannot be located.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if strings.Contains(raw, "@") {
			return "<redacted>"
		}
		return raw
	}
	return u.Redacted()
}

// urlKeys are the keys whose values are URLs that may carry a password in their user info.
// For these, LogValue shows the URL with only the password redacted, which keeps the host and
// vhost visible to an operator.
var urlKeys = map[string]bool{"source.rabbitmq.url": true, "app.url": true, "app.health_url": true}

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
		switch {
		case sf.Type == secretType:
			s := Secret(fv.String())
			if urlKeys[key] && s != "" {
				out = append(out, slog.String(tag, RedactURL(s.Reveal())))
			} else {
				out = append(out, slog.String(tag, s.String()))
			}
		case urlKeys[key]:
			out = append(out, slog.String(tag, RedactURL(fv.String())))
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
