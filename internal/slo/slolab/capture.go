package slolab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/lab"
)

// captureSnap is how much of each packet tcpdump keeps: the IP and TCP
// headers are enough to read the marks.
const captureSnap = "128"

// capture starts tcpdump in host h, recording the TCP packets sent to
// port, and waits until it listens. The function it returns stops tcpdump
// and waits for the file to be complete.
func capture(ctx context.Context, h *lab.Host, file string, port int) (func() error, error) {
	if _, err := exec.LookPath("tcpdump"); err != nil {
		return nil, fmt.Errorf("capturing packets needs tcpdump: %w", err)
	}
	// Not ctx: the capture must outlive the run's context to be flushed.
	cmd := h.Run(context.WithoutCancel(ctx), "tcpdump", "-i", "hf0", "-n", "-U", "-s", captureSnap,
		"-Z", "root", "-w", file, "tcp and dst port "+strconv.Itoa(port))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting tcpdump in %s: %w", h, err)
	}
	ready := make(chan error, 1)
	var errText bytes.Buffer
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			errText.WriteString(line + "\n")
			if !sent && strings.Contains(line, "listening on") {
				ready <- nil
				sent = true
			}
		}
		if !sent {
			ready <- fmt.Errorf("tcpdump exited before listening: %s", strings.TrimSpace(errText.String()))
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			cmd.Wait()
			return nil, err
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		return nil, errors.New("tcpdump did not start listening within 10s")
	}
	return func() error {
		// SIGINT makes tcpdump flush and close the file. cmd.Process is the
		// `ip netns exec`, which execs tcpdump in place.
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			return fmt.Errorf("stopping tcpdump: %w", err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
			return nil
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			return errors.New("tcpdump did not stop within 10s")
		}
	}, nil
}

// Mark is the DSCP of one captured packet.
type Mark struct {
	// Time is the capture time stamp.
	Time time.Time
	// DSCP is the code point (the TOS or traffic-class byte >> 2).
	DSCP uint8
	// Length is the IP packet's length in bytes.
	Length int
}

// MarkRun is a run of consecutive packets with the same mark.
type MarkRun struct {
	DSCP uint8
	// First and Last are the time stamps of its first and last packets.
	First, Last time.Time
	// Packets counts them.
	Packets int
}

var (
	lineRE = regexp.MustCompile(`^(\d+)\.(\d{6}) IP6? \(`)
	tosRE  = regexp.MustCompile(`\b(?:tos|class) 0x([0-9a-f]+)`)
	ip4Len = regexp.MustCompile(`\blength (\d+)\)`)
	ip6Len = regexp.MustCompile(`payload length: (\d+)\)`)
	isIPv6 = regexp.MustCompile(`^\d+\.\d+ IP6 `)
)

// ReadMarks reads a capture file with `tcpdump -r -v` and returns the
// marks of its packets, in order. Packets of IPv6 whose traffic class is
// zero carry no "class" field in tcpdump's output; they read as DSCP 0.
func ReadMarks(ctx context.Context, file string) ([]Mark, error) {
	out, err := exec.CommandContext(ctx, "tcpdump", "-r", file, "-n", "-v", "-tt").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("reading capture %s: %w: %s", file, err, bytes.TrimSpace(ee.Stderr))
		}
		return nil, fmt.Errorf("reading capture %s: %w", file, err)
	}
	return ParseMarks(out)
}

// ParseMarks reads the output of `tcpdump -n -v -tt` (IPv4 and IPv6).
func ParseMarks(out []byte) ([]Mark, error) {
	var marks []Mark
	for line := range strings.SplitSeq(string(out), "\n") {
		m := lineRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		sec, _ := strconv.ParseInt(m[1], 10, 64)
		usec, _ := strconv.ParseInt(m[2], 10, 64)
		mk := Mark{Time: time.Unix(sec, usec*1000)}
		if t := tosRE.FindStringSubmatch(line); t != nil {
			v, err := strconv.ParseUint(t[1], 16, 8)
			if err != nil {
				return nil, fmt.Errorf("bad TOS in %q", line)
			}
			mk.DSCP = uint8(v >> 2)
		} else if !isIPv6.MatchString(line) {
			return nil, fmt.Errorf("IPv4 line without tos: %q", line)
		}
		if l := ip4Len.FindStringSubmatch(line); l != nil && !isIPv6.MatchString(line) {
			mk.Length, _ = strconv.Atoi(l[1])
		} else if l := ip6Len.FindStringSubmatch(line); l != nil {
			n, _ := strconv.Atoi(l[1])
			mk.Length = n + 40
		}
		marks = append(marks, mk)
	}
	return marks, nil
}

// MarkRuns collapses marks into runs of the same DSCP.
func MarkRuns(marks []Mark) []MarkRun {
	var runs []MarkRun
	for _, m := range marks {
		if n := len(runs); n > 0 && runs[n-1].DSCP == m.DSCP {
			runs[n-1].Last = m.Time
			runs[n-1].Packets++
			continue
		}
		runs = append(runs, MarkRun{DSCP: m.DSCP, First: m.Time, Last: m.Time, Packets: 1})
	}
	return runs
}
