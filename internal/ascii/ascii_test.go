package ascii

import "testing"

func TestEqualFold(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"Content-Length", "content-length", true},
		{"CONNECTION", "Connection", true},
		{"x-delivery-count", "X-Delivery-Count", true},
		{"close", "clos", false},
		{"close", "clost", false},
		{"[", "{", false},                // 0x5B and 0x7B differ by the case bit but are not letters
		{"Kelvin", "\u212aelvin", false}, // Unicode folds K (Kelvin sign) to k; ASCII does not
		{"", "", true},
	} {
		if got := EqualFold(c.a, c.b); got != c.want {
			t.Errorf("EqualFold(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
		if got := EqualFold([]byte(c.a), c.b); got != c.want {
			t.Errorf("EqualFold([]byte(%q), %q) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}
