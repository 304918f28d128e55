package templates

import (
	"embed"
	"io/fs"
	"sort"
)

// FS holds the shipped templates at its root.
//
//go:embed *.tmpl *.ctmpl
var FS embed.FS

// Names lists the shipped templates, sorted.
func Names() []string {
	entries, err := fs.ReadDir(FS, ".")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}
