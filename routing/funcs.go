package routing

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"text/template"
)

// FuncMap returns the functions templates may call, besides text/template's
// built-ins (and, or, not, len, index, printf, eq, lt, …):
//
//	join SEP LIST        elements of any slice joined with SEP: {{join "," .Hosts}}
//	replace OLD NEW S    S with every OLD replaced by NEW
//	lower S, upper S     case conversion
//	default DEF V        V, or DEF when V is empty/zero: {{.Vars.x | default "5"}}
//	mb N                 N megabytes in bytes (N·1048576)
//	add A B              A+B (integers), e.g. for port arithmetic
//	sanitize S           S made safe as an HAProxy/ini identifier (see Sanitize)
//	env NAME             the renderer's environment variable NAME ("" if unset)
//
// The model's own methods (Mesh.Primaries, Group.PrimaryFirst,
// Members.Hosts, RenderData.GroupPort, …) do the rest.
func FuncMap() template.FuncMap {
	return template.FuncMap{
		"join":     joinAny,
		"replace":  func(old, new, s string) string { return strings.ReplaceAll(s, old, new) },
		"lower":    strings.ToLower,
		"upper":    strings.ToUpper,
		"default":  defaultValue,
		"mb":       func(n int) uint64 { return uint64(n) << 20 },
		"add":      func(a, b int) int { return a + b },
		"sanitize": Sanitize,
		"env":      os.Getenv,
	}
}

// Sanitize makes s usable as an identifier in HAProxy (proxy and server
// names) and ini-style files: letters, digits, '-', '_' and '.' are kept,
// anything else becomes '_'; an empty string becomes "_".
func Sanitize(s string) string {
	if s == "" {
		return "_"
	}
	b := []byte(s)
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			b[i] = '_'
		}
	}
	return string(b)
}

func joinAny(sep string, list any) (string, error) {
	if list == nil {
		return "", nil
	}
	if ss, ok := list.([]string); ok {
		return strings.Join(ss, sep), nil
	}
	v := reflect.ValueOf(list)
	if v.Kind() != reflect.Slice && v.Kind() != reflect.Array {
		return "", fmt.Errorf("join: want a list, got %T", list)
	}
	parts := make([]string, v.Len())
	for i := range parts {
		parts[i] = fmt.Sprint(v.Index(i).Interface())
	}
	return strings.Join(parts, sep), nil
}

func defaultValue(def, v any) any {
	if v == nil {
		return def
	}
	rv := reflect.ValueOf(v)
	if rv.IsZero() {
		return def
	}
	switch rv.Kind() {
	case reflect.Slice, reflect.Map:
		if rv.Len() == 0 {
			return def
		}
	}
	return v
}
