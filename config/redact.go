package config

import (
	"log/slog"
	"reflect"
	"strings"
	"time"
)

// RedactURL returns raw with everything between "://" and the last "@" replaced by
// "xxxxx" ("amqp://xxxxx@host:5672/vhost"), safe to log. It does not parse raw, so a URL
// that does not parse, or parses differently than it reads (a "#", "?" or "/" in the
// password), is redacted just the same: nothing before the last "@" is shown beyond the
// scheme. Without "://" (user:password@host:port), everything before the last "@" is
// replaced. A string without "@" carries no user info and is returned unchanged.
func RedactURL(raw string) string {
	at := strings.LastIndexByte(raw, '@')
	if at < 0 {
		return raw
	}
	start := 0
	if i := strings.Index(raw[:at], "://"); i >= 0 {
		start = i + len("://")
	}
	return raw[:start] + "xxxxx" + raw[at:]
}

// urlKeys are the keys whose values are URLs that may carry a password in their user info.
// For these, LogValue shows the URL with its user info redacted (RedactURL), which keeps the
// host and vhost visible to an operator.
var urlKeys = map[string]bool{"source.rabbitmq.url": true, "app.url": true, "app.health_url": true}

// addrKeys are the keys whose values are host:port lists. Validation refuses entries with
// user info, but the summary may be logged for a configuration that failed validation, so
// each entry goes through RedactURL too.
var addrKeys = map[string]bool{"source.kafka.brokers": true, "source.rocketmq.nameservers": true, "dedup.redis.addrs": true}

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
		case addrKeys[key] && sf.Type.Kind() == reflect.Slice:
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
