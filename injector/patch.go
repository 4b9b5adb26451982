package injector

import "strings"

// patchOp is one RFC 6902 JSON patch operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// appendToList appends v to the JSON array at path, which currently has n elements. An
// empty list may be absent from the JSON (omitempty), so it is created whole.
func appendToList(ops []patchOp, path string, n int, v any) []patchOp {
	if n == 0 {
		return append(ops, patchOp{Op: "add", Path: path, Value: []any{v}})
	}
	return append(ops, patchOp{Op: "add", Path: path + "/-", Value: v})
}

// setMapEntry sets key to value in the JSON object at path (labels, annotations), creating
// the object when cur is empty, because an empty map may be absent from the JSON.
func setMapEntry(ops []patchOp, path string, cur map[string]string, key, value string) []patchOp {
	if len(cur) == 0 {
		return append(ops, patchOp{Op: "add", Path: path, Value: map[string]string{key: value}})
	}
	return append(ops, patchOp{Op: "add", Path: path + "/" + escapePointer(key), Value: value})
}

// escapePointer escapes a JSON pointer reference token (RFC 6901): "~" → "~0", "/" → "~1".
func escapePointer(s string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
}
