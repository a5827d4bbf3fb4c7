package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/pbsq/pbsq/datastore"
)

// progressPrinter renders progress as a bar on a terminal and as plain
// lines (at most one every 2 s) otherwise, so logs stay readable.
type progressPrinter struct {
	mu      sync.Mutex
	w       io.Writer
	label   string
	enabled bool
	tty     bool
	bar     *progressbar.ProgressBar
	phase   string
	last    time.Time
	// pending is the newest state not yet printed (non-TTY only).
	pending string
}

func newProgressPrinter(w io.Writer, label string, enabled bool) *progressPrinter {
	p := &progressPrinter{w: w, label: label, enabled: enabled}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

func (p *progressPrinter) update(pr datastore.Progress) {
	p.show(pr.Phase, pr.Done, pr.Total, pr.Message)
}

// show renders one progress state.
func (p *progressPrinter) show(phase string, done, total int64, msg string) {
	if p == nil || !p.enabled {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		if p.bar == nil || phase != p.phase {
			if p.bar != nil {
				_ = p.bar.Finish()
				fmt.Fprintln(p.w)
			}
			max := total
			if max <= 0 {
				max = -1
			}
			p.bar = progressbar.NewOptions64(max,
				progressbar.OptionSetWriter(p.w),
				progressbar.OptionSetDescription(p.label+" "+phase),
				progressbar.OptionShowCount(),
				progressbar.OptionSetWidth(30),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionClearOnFinish(),
			)
			p.phase = phase
		}
		if total > 0 && p.bar.GetMax64() != total {
			p.bar.ChangeMax64(total)
		}
		_ = p.bar.Set64(done)
		return
	}
	head := p.label
	if phase != "" && phase != p.label {
		head += " " + phase
	}
	line := fmt.Sprintf("%s: %d %s", head, done, msg)
	if total > 0 {
		line = fmt.Sprintf("%s: %d/%d (%.0f%%) %s", head, done, total, 100*float64(done)/float64(total), msg)
	}
	if phase == p.phase && time.Since(p.last) < 2*time.Second {
		p.pending = line
		return
	}
	p.phase, p.last, p.pending = phase, time.Now(), ""
	fmt.Fprintln(p.w, line)
}

func (p *progressPrinter) done() {
	if p == nil || !p.enabled {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		_ = p.bar.Finish()
	}
	if p.pending != "" {
		fmt.Fprintln(p.w, p.pending)
		p.pending = ""
	}
}
