package main

import (
	"os"
	"syscall"
	"unsafe"
)

// isTerminal asks the kernel for terminal attributes, so /dev/null (a
// character device, as CI's stdin often is) does not pass for a person.
func isTerminal(f *os.File) bool {
	var t syscall.Termios
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), syscall.TCGETS, uintptr(unsafe.Pointer(&t)))
	return errno == 0
}
