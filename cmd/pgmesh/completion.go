package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// The scripts call `pgmesh … --generate-bash-completion`, which urfave/cli
// answers because EnableBashCompletion is on, so completion follows the
// commands and flags of the installed binary instead of a generated list
// that goes stale. They are urfave/cli's own (MIT), with the program name
// filled in.
const bashCompletion = `# bash completion for pgmesh; load with: source <(pgmesh completion bash)
_pgmesh_bash_autocomplete() {
  if [[ "${COMP_WORDS[0]}" != "source" ]]; then
    local cur opts
    COMPREPLY=()
    cur="${COMP_WORDS[COMP_CWORD]}"
    if [[ "$cur" == "-"* ]]; then
      opts=$("${COMP_WORDS[@]:0:$COMP_CWORD}" "${cur}" --generate-bash-completion 2>/dev/null)
    else
      opts=$("${COMP_WORDS[@]:0:$COMP_CWORD}" --generate-bash-completion 2>/dev/null)
    fi
    COMPREPLY=($(compgen -W "${opts}" -- "${cur}"))
    return 0
  fi
}
complete -o bashdefault -o default -o nospace -F _pgmesh_bash_autocomplete pgmesh
`

const zshCompletion = `#compdef pgmesh
# zsh completion for pgmesh; load with: source <(pgmesh completion zsh)
_pgmesh_zsh_autocomplete() {
  local -a opts
  local cur
  cur=${words[-1]}
  if [[ "$cur" == "-"* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ${cur} --generate-bash-completion)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion)}")
  fi
  if [[ "${opts[1]}" != "" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}
compdef _pgmesh_zsh_autocomplete pgmesh
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash or zsh)",
		ArgsUsage: "bash|zsh",
		Description: "bash: source <(pgmesh completion bash)   (or save it in /etc/bash_completion.d/pgmesh)\n" +
			"zsh:  source <(pgmesh completion zsh)",
		Action: func(c *cli.Context) error {
			switch c.Args().First() {
			case "bash":
				fmt.Fprint(c.App.Writer, bashCompletion)
			case "zsh":
				fmt.Fprint(c.App.Writer, zshCompletion)
			default:
				return usageErr("completion: say bash or zsh")
			}
			return nil
		},
	}
}
