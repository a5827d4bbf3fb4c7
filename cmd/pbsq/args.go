package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// strictArgs makes every command of the tree refuse words it does not know,
// as bad input (exit 2), before the config is read or anything runs. Cobra
// on its own prints help and exits 0 for a command group given an unknown
// word (`pbsq enqueue veify`: a cron job with a typo would do nothing and
// look fine), and its argument errors carry no exit code.
//
// Call it on the finished tree: it also covers cobra's own help and
// completion commands, and commands other files register.
func strictArgs(root *cobra.Command) {
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		switch {
		case c.Name() == "help" && c.Parent() == root:
			c.Args = usageArgs(helpTopic)
		case c.HasSubCommands() && !c.Runnable():
			groupCmd(c)
		case c.Args == nil:
			// Cobra would take any words; a leaf says what it takes.
			c.Args = leafArgs(cobra.NoArgs)
		default:
			c.Args = leafArgs(c.Args)
		}
	}
	walk(root)
}

// groupCmd makes a command group runnable, so that cobra hands an unknown
// subcommand to its Args instead of printing help, and makes a missing
// subcommand an error too.
func groupCmd(c *cobra.Command) {
	c.Args = usageArgs(unknownCommand)
	// Flags meant for the subcommand must not hide the unknown word:
	// `pbsq enqueue veify --store main` names "veify", not --store.
	c.FParseErrWhitelist.UnknownFlags = true
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		fmt.Fprint(cmd.ErrOrStderr(), cmd.UsageString())
		return usagef("%q needs a command: %s", cmd.CommandPath(), strings.Join(subcommandNames(cmd), ", "))
	}
}

// unknownCommand refuses any word given to a command group: had it named a
// subcommand, cobra would have run that instead.
func unknownCommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	return fmt.Errorf("unknown command %q for %q%s", args[0], cmd.CommandPath(), suggest(cmd, args[0]))
}

// helpTopic refuses `pbsq help` of a command that does not exist (cobra
// prints "Unknown help topic" and exits 0).
func helpTopic(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	c, rest, err := cmd.Root().Find(args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return fmt.Errorf("unknown command %q for %q%s", rest[0], c.CommandPath(), suggest(c, rest[0]))
	}
	return nil
}

// usageArgs makes an argument error bad input.
func usageArgs(valid cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := valid(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// leafArgs makes an argument error bad input that names the command, its
// usage and, when the validator takes a shorter prefix of the words, the
// first word too many (cobra's "accepts 1 arg(s), received 2" names none).
func leafArgs(valid cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		err := valid(cmd, args)
		if err == nil {
			return nil
		}
		for n := len(args) - 1; n >= 0; n-- {
			if valid(cmd, args[:n]) == nil {
				return usagef("unexpected argument %q for %q (usage: %s)", args[n], cmd.CommandPath(), cmd.UseLine())
			}
		}
		return usagef("%q: %w (usage: %s)", cmd.CommandPath(), err, cmd.UseLine())
	}
}

// suggest is cobra's "did you mean", on the same line.
func suggest(cmd *cobra.Command, word string) string {
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(word); len(s) > 0 {
		return fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	return ""
}

func subcommandNames(cmd *cobra.Command) []string {
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	return names
}
