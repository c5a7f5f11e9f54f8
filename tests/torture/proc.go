package torture

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one obdvol process (a command or a server).
type proc struct {
	id     int
	desc   string
	cmd    *exec.Cmd
	out    lockedBuffer
	done   chan struct{}
	rc     int
	killed bool // ended by SIGKILL (ours or strace's)
	hung   bool // killed by us after its deadline
	// onDone, for background commands, applies the result to the model;
	// the driver calls it when it reaps the process.
	onDone func(p *proc)
	reaped bool
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 1<<20 {
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) ok() bool { return !p.killed && !p.hung && p.rc == 0 }

// kind is the error kind obdvol printed with --json, or "".
func (p *proc) kind() string {
	out := p.out.String()
	i := strings.Index(out, `{"error"`)
	if i < 0 {
		return ""
	}
	var j struct {
		Error struct {
			Kind    string `json:"kind"`
			Message string `json:"message"`
		} `json:"error"`
	}
	json.NewDecoder(strings.NewReader(out[i:])).Decode(&j)
	return j.Error.Kind
}

// short is a one-line summary of the process's result for the op log.
func (p *proc) short() string {
	switch {
	case p.running():
		return "running"
	case p.hung:
		return "HUNG (killed)"
	case p.killed:
		return "killed"
	case p.rc == 0:
		return "ok"
	}
	msg := strings.TrimSpace(p.out.String())
	if i := strings.Index(msg, `"message":"`); i >= 0 {
		msg = msg[i+len(`"message":"`):]
		if j := strings.Index(msg, `"`); j >= 0 {
			msg = msg[:j]
		}
	}
	if len(msg) > 160 {
		msg = msg[:160] + "..."
	}
	return fmt.Sprintf("exit %d: %s", p.rc, strings.ReplaceAll(msg, "\n", " | "))
}

// crashed reports a Go panic or runtime fatal error in the output.
func (p *proc) crashed() bool {
	out := p.out.String()
	return strings.Contains(out, "panic:") || strings.Contains(out, "fatal error:") ||
		strings.Contains(out, "goroutine 1 [")
}

// start runs the process; its end is recorded in p.done.
func (w *world) start(desc string, inject string, args ...string) (*proc, error) {
	return w.startIn(w.root, desc, inject, args...)
}

// startIn starts obdvol on another root (the origin host of remote tags).
func (w *world) startIn(root, desc string, inject string, args ...string) (*proc, error) {
	w.nextProc++
	p := &proc{id: w.nextProc, desc: desc, done: make(chan struct{})}
	full := append([]string{"--root", root, "--no-progress", "--json"}, args...)
	if inject != "" {
		// strace delivers SIGKILL at the Nth call of a syscall: a kill at
		// an exact, replayable point of the command.
		sys := inject[:strings.IndexByte(inject, ':')]
		st := []string{"-f", "-qq", "-o", "/dev/null", "-e", "trace=" + sys, "-e", "inject=" + inject, w.bin}
		p.cmd = exec.Command("strace", append(st, full...)...)
	} else {
		p.cmd = exec.Command(w.bin, full...)
	}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	p.cmd.Env = append(os.Environ(), "OBDVOL_LAZY_CACHE_MAX=")
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		err := p.cmd.Wait()
		if p.cmd.ProcessState != nil {
			p.rc = p.cmd.ProcessState.ExitCode()
			if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
				p.killed = true
			}
		} else if err != nil {
			p.rc = -1
		}
		close(p.done)
	}()
	w.procs = append(w.procs, p)
	return p, nil
}

// wait waits for p at most d; past it p has hung: it is killed and a
// finding is recorded.
func (w *world) wait(p *proc, d time.Duration) {
	select {
	case <-p.done:
	case <-time.After(d):
		p.hung = true
		w.find("hang", "%s did not finish in %s", p.desc, d)
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	w.afterProc(p)
}

// afterProc records the findings any finished process can show.
func (w *world) afterProc(p *proc) {
	if p.reaped {
		return
	}
	p.reaped = true
	if p.crashed() {
		out := p.out.String()
		if len(out) > 3000 {
			out = out[:3000]
		}
		key := out
		if i := strings.Index(out, "panic:"); i >= 0 {
			key = firstLine(out[i:])
		}
		if strings.Contains(out, "bbolt") {
			key = "bbolt"
		}
		w.findOnce("panic:"+key, "panic", "%s crashed:\n%s", p.desc, out)
	}
	if out := p.out.String(); strings.Contains(out, "is active on") {
		// The harness never asks this of a volume it serves: the server
		// it names was killed, and the catalogue still says it runs.
		w.findOnce("stale-device", "stale", "%s refused: the volume's server was killed, yet the catalogue says it is active: %s", p.desc, p.short())
	}
	for i, q := range w.procs {
		if q == p {
			w.procs = append(w.procs[:i], w.procs[i+1:]...)
			break
		}
	}
}

// kill9 sends SIGKILL to p (and strace, if it runs under it).
func (w *world) kill9(p *proc) {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// run runs one command in the foreground and logs its result. An
// injection set by the strace-kill fault applies to it.
func (w *world) run(args ...string) *proc {
	inject := w.inject
	w.inject = ""
	desc := "obdvol " + strings.Join(args, " ")
	if inject != "" {
		desc += " [kill at " + inject + "]"
	}
	p, err := w.start(desc, inject, args...)
	if err != nil {
		w.t.Fatalf("start %s: %v", desc, err)
	}
	w.wait(p, w.cmdTimeout)
	w.logf("  %s -> %s", desc, p.short())
	return p
}
