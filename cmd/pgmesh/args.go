package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// interspersed moves a command's flags in front of its positional
// arguments. urfave/cli v2 stops reading flags at the first argument, so
// `pgmesh restart n1 --force` would otherwise treat --force as a second
// member name; operators type flags after the member as often as before.
func interspersed(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	for _, a := range args {
		if a == "--generate-bash-completion" {
			// Completion must see exactly what the shell typed.
			return args
		}
	}
	out := []string{args[0]}
	i := skipFlags(app.Flags, args, 1, &out)
	cmds := app.Commands
	var cmd *cli.Command
	for i < len(args) {
		c := findCommand(cmds, args[i])
		if c == nil {
			break
		}
		out = append(out, args[i])
		cmd, cmds = c, c.Subcommands
		i = skipFlags(c.Flags, args, i+1, &out)
		if len(c.Subcommands) == 0 {
			break
		}
	}
	if cmd == nil || len(cmd.Subcommands) > 0 {
		return append(out, args[i:]...)
	}
	var flags, pos []string
	for i < len(args) {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i:]...)
			break
		}
		if isFlag(a) {
			flags = append(flags, a)
			if takesValue(cmd.Flags, a) && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
		} else {
			pos = append(pos, a)
		}
		i++
	}
	return append(append(out, flags...), pos...)
}

// skipFlags copies the flags (and their values) at args[i:] to out and
// returns the index of the first non-flag argument.
func skipFlags(defs []cli.Flag, args []string, i int, out *[]string) int {
	for i < len(args) && isFlag(args[i]) && args[i] != "--" {
		*out = append(*out, args[i])
		if takesValue(defs, args[i]) && i+1 < len(args) {
			*out = append(*out, args[i+1])
			i++
		}
		i++
	}
	return i
}

func isFlag(a string) bool { return len(a) > 1 && a[0] == '-' }

// takesValue: the flag is defined, is not a boolean, and was not written
// as --name=value.
func takesValue(defs []cli.Flag, a string) bool {
	name := strings.TrimLeft(a, "-")
	if strings.Contains(name, "=") {
		return false
	}
	for _, f := range defs {
		for _, n := range f.Names() {
			if n == name {
				_, isBool := f.(*cli.BoolFlag)
				return !isBool
			}
		}
	}
	return false
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}
