//go:build !linux

package main

import "os"

// isTerminal falls back to "is a character device" where pgmesh does not
// know the terminal ioctl.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
