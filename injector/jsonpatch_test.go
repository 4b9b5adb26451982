package injector

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// applyPatch applies an RFC 6902 JSON patch (add, remove, replace, test) to doc. It is a
// deliberately independent, small implementation so that tests check the patch the webhook
// emits against the RFC, not against the code that wrote it.
func applyPatch(doc, patch []byte) ([]byte, error) {
	var root any
	if err := json.Unmarshal(doc, &root); err != nil {
		return nil, fmt.Errorf("document: %w", err)
	}
	var ops []struct {
		Op    string           `json:"op"`
		Path  *string          `json:"path"`
		Value *json.RawMessage `json:"value"`
	}
	dec := json.NewDecoder(strings.NewReader(string(patch)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ops); err != nil {
		return nil, fmt.Errorf("patch: %w", err)
	}
	for i, op := range ops {
		if op.Path == nil {
			return nil, fmt.Errorf("op %d: missing path", i)
		}
		var val any
		if op.Op == "add" || op.Op == "replace" || op.Op == "test" {
			if op.Value == nil {
				return nil, fmt.Errorf("op %d (%s %s): missing value", i, op.Op, *op.Path)
			}
			if err := json.Unmarshal(*op.Value, &val); err != nil {
				return nil, fmt.Errorf("op %d: value: %w", i, err)
			}
		}
		var err error
		root, err = applyOp(root, op.Op, *op.Path, val)
		if err != nil {
			return nil, fmt.Errorf("op %d (%s %s): %w", i, op.Op, *op.Path, err)
		}
	}
	return json.Marshal(root)
}

func applyOp(root any, op, path string, val any) (any, error) {
	if path == "" {
		switch op {
		case "add", "replace":
			return val, nil
		case "test":
			if !reflect.DeepEqual(root, val) {
				return nil, fmt.Errorf("test failed")
			}
			return root, nil
		}
		return nil, fmt.Errorf("cannot %s the whole document", op)
	}
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("path must start with /")
	}
	tokens := strings.Split(path[1:], "/")
	for i, t := range tokens {
		tokens[i] = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
	}
	parent := root
	for _, t := range tokens[:len(tokens)-1] {
		switch p := parent.(type) {
		case map[string]any:
			next, ok := p[t]
			if !ok {
				return nil, fmt.Errorf("parent member %q does not exist", t)
			}
			parent = next
		case []any:
			n, err := arrayIndex(t, len(p), false)
			if err != nil {
				return nil, err
			}
			parent = p[n]
		default:
			return nil, fmt.Errorf("cannot descend into %T at %q", parent, t)
		}
	}
	last := tokens[len(tokens)-1]
	switch p := parent.(type) {
	case map[string]any:
		_, exists := p[last]
		switch op {
		case "add":
			p[last] = val
		case "replace":
			if !exists {
				return nil, fmt.Errorf("replace: member %q does not exist", last)
			}
			p[last] = val
		case "remove":
			if !exists {
				return nil, fmt.Errorf("remove: member %q does not exist", last)
			}
			delete(p, last)
		case "test":
			if !exists || !reflect.DeepEqual(p[last], val) {
				return nil, fmt.Errorf("test failed")
			}
		default:
			return nil, fmt.Errorf("unsupported op %q", op)
		}
		return root, nil
	case []any:
		// Arrays are values in Go: rebuild the parent and write it back through the path.
		var updated []any
		switch op {
		case "add":
			n, err := arrayIndex(last, len(p), true)
			if err != nil {
				return nil, err
			}
			updated = append(append(append([]any{}, p[:n]...), val), p[n:]...)
		case "replace", "remove", "test":
			n, err := arrayIndex(last, len(p), false)
			if err != nil {
				return nil, err
			}
			switch op {
			case "replace":
				updated = append([]any{}, p...)
				updated[n] = val
			case "remove":
				updated = append(append([]any{}, p[:n]...), p[n+1:]...)
			case "test":
				if !reflect.DeepEqual(p[n], val) {
					return nil, fmt.Errorf("test failed")
				}
				return root, nil
			}
		default:
			return nil, fmt.Errorf("unsupported op %q", op)
		}
		parentPath := "/" + strings.Join(escapeAll(tokens[:len(tokens)-1]), "/")
		if len(tokens) == 1 {
			parentPath = ""
		}
		return applyOp(root, "replace", parentPath, updated)
	default:
		return nil, fmt.Errorf("parent is %T, not a container", parent)
	}
}

func escapeAll(ts []string) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = escapePointer(t)
	}
	return out
}

func arrayIndex(t string, n int, forAdd bool) (int, error) {
	if forAdd && t == "-" {
		return n, nil
	}
	i, err := strconv.Atoi(t)
	if err != nil || i < 0 || (t != "0" && strings.HasPrefix(t, "0")) {
		return 0, fmt.Errorf("bad array index %q", t)
	}
	if i > n || (!forAdd && i == n) {
		return 0, fmt.Errorf("array index %d out of range (len %d)", i, n)
	}
	return i, nil
}

func TestApplyPatch(t *testing.T) {
	doc := `{"a":{"b/c":1,"l":[1,2]},"x":"y"}`
	cases := []struct {
		patch, want string
		wantErr     bool
	}{
		{`[{"op":"add","path":"/a/l/-","value":3}]`, `{"a":{"b/c":1,"l":[1,2,3]},"x":"y"}`, false},
		{`[{"op":"add","path":"/a/l/0","value":0}]`, `{"a":{"b/c":1,"l":[0,1,2]},"x":"y"}`, false},
		{`[{"op":"replace","path":"/a/b~1c","value":2}]`, `{"a":{"b/c":2,"l":[1,2]},"x":"y"}`, false},
		{`[{"op":"remove","path":"/a/l/1"}]`, `{"a":{"b/c":1,"l":[1]},"x":"y"}`, false},
		{`[{"op":"add","path":"/n","value":{"k":true}},{"op":"test","path":"/n/k","value":true}]`, `{"a":{"b/c":1,"l":[1,2]},"n":{"k":true},"x":"y"}`, false},
		{`[{"op":"add","path":"/missing/k","value":1}]`, "", true},
		{`[{"op":"replace","path":"/nope","value":1}]`, "", true},
		{`[{"op":"add","path":"/a/l/5","value":1}]`, "", true},
		{`[{"op":"test","path":"/x","value":"z"}]`, "", true},
		{`[{"op":"add","path":"/x"}]`, "", true},
		{`[{"op":"move","from":"/x","path":"/y"}]`, "", true},
	}
	for _, c := range cases {
		got, err := applyPatch([]byte(doc), []byte(c.patch))
		if c.wantErr {
			if err == nil {
				t.Errorf("%s: want error, got %s", c.patch, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.patch, err)
			continue
		}
		var g, w any
		_ = json.Unmarshal(got, &g)
		_ = json.Unmarshal([]byte(c.want), &w)
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%s:\n got %s\nwant %s", c.patch, got, c.want)
		}
	}
}
