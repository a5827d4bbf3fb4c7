package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// cliTree is the command tree with every leaf's action replaced by a probe
// that records the run, so that a word the tree wrongly accepts is seen and
// does nothing.
func cliTree(t *testing.T, ran *[]string) (root *cobra.Command, groups, leaves []*cobra.Command) {
	t.Helper()
	// Were a word wrongly accepted, the config read before the action
	// would be this empty one.
	cfg := filepath.Join(t.TempDir(), "pbsq.yaml")
	if err := os.WriteFile(cfg, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PBSQ_CONFIG", cfg)
	root = newRootCmd()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasSubCommands() {
			groups = append(groups, c)
		} else {
			leaves = append(leaves, c)
			c.Run = nil
			c.RunE = func(cmd *cobra.Command, _ []string) error {
				*ran = append(*ran, cmd.CommandPath())
				return nil
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return root, groups, leaves
}

// execute runs the tree as main does and returns the exit code and error.
func execute(root *cobra.Command, args ...string) (int, error) {
	root.SetArgs(args)
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	err := root.ExecuteContext(context.Background())
	return exitCode(err), err
}

// path is a command's words below the root.
func path(c *cobra.Command) []string {
	return strings.Fields(c.CommandPath())[1:]
}

// TestUnknownCommandExit2 runs every command group with an unknown word
// (before and after a flag meant for a subcommand) and with no word at all:
// each is bad input, exit 2, with one line naming the word, and nothing runs.
func TestUnknownCommandExit2(t *testing.T) {
	var ran []string
	root, groups, _ := cliTree(t, &ran)
	var names []string
	for _, g := range groups {
		names = append(names, g.CommandPath())
		for _, args := range [][]string{
			append(path(g), "veify", "--store", "main"),
			append(path(g), "--store", "main", "veify"),
		} {
			code, err := execute(root, args...)
			want := `unknown command "veify" for "` + g.CommandPath() + `"`
			if code != exitInvalid || err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("pbsq %s: exit %d, error %q; want exit 2 and one line starting %s", strings.Join(args, " "), code, err, want)
			}
		}
		code, err := execute(root, path(g)...)
		if code != exitInvalid || err == nil || !strings.Contains(err.Error(), "needs a command") {
			t.Errorf("pbsq %s: exit %d, error %v; want exit 2, needs a command", strings.Join(path(g), " "), code, err)
		}
	}
	for _, want := range []string{"pbsq", "pbsq datastore", "pbsq run", "pbsq tasks", "pbsq ns", "pbsq locks", "pbsq schedules", "pbsq enqueue", "pbsq completion"} {
		if !slices.Contains(names, want) {
			t.Errorf("command group %q not covered (groups: %v)", want, names)
		}
	}
	if len(ran) > 0 {
		t.Errorf("unknown commands ran %v", ran)
	}
	// A near miss is suggested, on the same line.
	if _, err := execute(root, "enqueue", "veify"); err == nil || !strings.Contains(err.Error(), `did you mean "verify"?`) {
		t.Errorf("no suggestion: %v", err)
	}
	if _, err := execute(root, "help", "enqueue", "veify"); exitCode(err) != exitInvalid || !strings.Contains(err.Error(), `"veify"`) {
		t.Errorf("pbsq help enqueue veify: %v", err)
	}
}

// TestExtraArgumentExit2 gives every leaf command one word more than it
// takes: exit 2, one line naming the word, and nothing runs. Leaves that
// take any number of words (a command line to run, files to back up) are
// listed, so a new one is a decision, not an accident.
func TestExtraArgumentExit2(t *testing.T) {
	var ran []string
	root, _, leaves := cliTree(t, &ran)
	var unbounded []string
	for _, c := range leaves {
		words := func(n int) []string { return slices.Repeat([]string{"word"}, n) }
		n := 0
		for ; n < 3 && c.Args(c, words(n)) != nil; n++ {
		}
		if c.Args(c, words(n)) != nil {
			t.Errorf("%s: takes none of 0..3 words", c.CommandPath())
			continue
		}
		if c.Args(c, words(n+8)) == nil {
			unbounded = append(unbounded, c.CommandPath())
			continue
		}
		args := append(append(path(c), words(n)...), "extra")
		code, err := execute(root, args...)
		want := `unexpected argument "extra" for "` + c.CommandPath() + `"`
		if c.Name() == "help" {
			want = `unknown command "extra" for "pbsq"` // a help topic
		}
		if code != exitInvalid || err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("pbsq %s: exit %d, error %q; want exit 2 and one line starting %s", strings.Join(args, " "), code, err, want)
		}
	}
	slices.Sort(unbounded)
	if want := []string{"pbsq backup", "pbsq lock"}; !slices.Equal(unbounded, want) {
		t.Errorf("leaves taking any number of words: %v, want %v", unbounded, want)
	}
	if len(ran) > 0 {
		t.Errorf("commands with an extra word ran: %v", ran)
	}
	if len(leaves) < 25 {
		t.Errorf("only %d leaf commands found", len(leaves))
	}
	// Too few words is bad input too.
	if code, err := execute(root, "tasks", "show"); code != exitInvalid {
		t.Errorf("pbsq tasks show: exit %d (%v), want 2", code, err)
	}
}

// TestTypoQueuesNothing is the cron job with a typo, end to end: exit 2, one
// line on stderr naming the word, nothing on stdout, nothing queued.
func TestTypoQueuesNothing(t *testing.T) {
	e := newEnv(t, true)
	for _, c := range []struct {
		args []string
		word string // named on stderr's only line; "": usage precedes the error
	}{
		{[]string{"enqueue", "veify", "--store", "demo"}, "veify"},
		{[]string{"enqueue", "verify", "--store", "demo", "now"}, "now"},
		{[]string{"nosuch", "--store", "demo"}, "nosuch"},
		{[]string{"enqueue", "--store", "demo"}, ""},
	} {
		out, errs := e.expect(exitInvalid, c.args...)
		if out != "" {
			t.Errorf("pbsq %v: stdout %q", c.args, out)
		}
		if c.word != "" && (strings.Count(errs, "\n") != 1 || !strings.Contains(errs, `"`+c.word+`"`)) {
			t.Errorf("pbsq %v: stderr %q, want one line naming %q", c.args, errs, c.word)
		}
	}
	if n := e.queued(); n != 0 {
		t.Fatalf("%d tasks queued by refused enqueues", n)
	}
}
