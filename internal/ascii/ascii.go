// Package ascii holds byte-level helpers for protocol text (HTTP header names, AMQP table
// keys) where Unicode case folding would be wrong: only A-Z and a-z fold into each other.
package ascii

// EqualFold reports whether a and b are equal ignoring ASCII case. It takes the bytes of a
// buffer as well as a string, so a parser can compare without converting (no allocation).
func EqualFold[T string | []byte](a T, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(b) {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
