// Command pgmesh is the pgmesh agent and operator CLI.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	app := newApp()
	if err := app.Run(interspersed(app, os.Args)); err != nil {
		if msg := err.Error(); msg != "" {
			fmt.Fprintf(os.Stderr, "pgmesh: %s\n", msg)
		}
		os.Exit(exitCode(err))
	}
}

func exitCode(err error) int {
	if ec, ok := err.(cli.ExitCoder); ok {
		return ec.ExitCode()
	}
	return 1
}
