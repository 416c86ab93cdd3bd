// Command stream measures what netdiag costs on a loopback bulk transfer:
// a sender writes messages of -msg bytes (header + payload) to a receiver
// that acknowledges each with a netdiag.Ack, for -bytes in total. The
// sender's connection is unmonitored ("off"), monitored with
// netdiag.DefaultConfig ("default": a write kernel-timestamped at most every
// 20 ms, every message recorded, TCP_INFO every 100 ms, records written to a
// log directory), monitored with every write kernel-timestamped
// ("every-write"), or with TCP_INFO and message records but no kernel
// timestamps ("tcpinfo"); "off-again" repeats "off" to show the noise
// floor. Modes are interleaved run by run, in an order rotated each run; it
// prints one line per run and a table of medians, with each mode's ratio to
// "off" taken within each run (paired) and summarised by median and
// interquartile range.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/netdiag"
)

const hdrSize = 12

type result struct {
	run     int
	mode    string
	seconds float64
	cpu     float64 // process CPU seconds (user+sys)
	bytes   int64
}

func main() {
	total := flag.Int64("bytes", 2<<30, "bytes per run")
	msg := flag.Int("msg", 1<<20, "message payload size")
	runs := flag.Int("runs", 5, "runs per mode")
	modes := flag.String("modes", "off,default,every-write,off-again", "modes to run, interleaved")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile here")
	bookN := flag.Int("bookkeeping", 200000, "messages for the bookkeeping measurement (0: skip)")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dir, err := os.MkdirTemp("", "netdiag-bench-")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(dir)
	var all []result
	list := strings.Split(*modes, ",")
	for r := range *runs {
		// Rotate the order each run so that no mode always runs first.
		for i := range list {
			mode := list[(i+r)%len(list)]
			res, err := run(context.Background(), mode, *total, *msg, dir, log)
			if err != nil {
				fatal(fmt.Errorf("run %d mode %s: %w", r, mode, err))
			}
			res.run = r
			fmt.Printf("run %d %-8s %6.3f s  %7.2f MiB/s  cpu %6.3f s\n", r+1, mode, res.seconds, float64(res.bytes)/res.seconds/(1<<20), res.cpu)
			all = append(all, res)
		}
	}
	fmt.Println()
	// Ratios are paired: each run's figure over "off" in the same run (the
	// modes of one run are adjacent in time, so slow swings of the machine's
	// load cancel), then the median and quartiles of those ratios.
	fmt.Printf("%-12s %12s %22s %14s %22s\n", "mode", "MiB/s (p50)", "vs off p50 [IQR]", "CPU s/GiB p50", "vs off p50 [IQR]")
	for _, mode := range list {
		var tp, cpu, rt, rc []float64
		for r := range *runs {
			m, base := find(all, r, mode), find(all, r, "off")
			tp = append(tp, m.rate())
			cpu = append(cpu, m.cpuPerGiB())
			if base != nil {
				rt = append(rt, m.rate()/base.rate())
				rc = append(rc, m.cpuPerGiB()/base.cpuPerGiB())
			}
		}
		st, sc := "-", "-"
		if mode != "off" && len(rt) > 0 {
			st = fmt.Sprintf("%.3f [%.2f-%.2f]", quantile(rt, 0.5), quantile(rt, 0.25), quantile(rt, 0.75))
			sc = fmt.Sprintf("%.3f [%.2f-%.2f]", quantile(rc, 0.5), quantile(rc, 0.25), quantile(rc, 0.75))
		}
		fmt.Printf("%-12s %12.1f %22s %14.3f %22s\n", mode, quantile(tp, 0.5), st, quantile(cpu, 0.5), sc)
	}
	if *bookN > 0 {
		var offCPU, offRate []float64
		for _, r := range all {
			if r.mode == "off" {
				offCPU = append(offCPU, r.cpuPerGiB())
				offRate = append(offRate, r.rate())
			}
		}
		ns, sampleNs, err := bookkeeping(*bookN, dir, log)
		if err != nil {
			fatal(err)
		}
		tsOn, err := writeCost(*bookN/10, true, dir, log)
		if err != nil {
			fatal(err)
		}
		tsOff, err := writeCost(*bookN/10, false, dir, log)
		if err != nil {
			fatal(err)
		}
		ts := max(tsOn-tsOff, 0)
		fmt.Println()
		fmt.Printf("bookkeeping per message (Sent + AckedFrom + record encoded and written): %.0f ns (%d messages)\n", ns, *bookN)
		fmt.Printf("per TCP_INFO sample (getsockopt, 3 ioctl/getsockopt, record): %.0f ns\n", sampleNs)
		fmt.Printf("extra per kernel-timestamped write (1 KiB writes, %d each way): %.0f ns (%.0f with, %.0f without)\n", *bookN/10, ts, tsOn, tsOff)
		if len(offCPU) > 0 {
			off := quantile(offCPU, 0.5)
			msgs := float64(int64(1<<30) / int64(*msg))
			// At most one timestamped write per WriteSampleInterval, and
			// one write per message: at off's rate a GiB takes secs.
			secs := 1024 / quantile(offRate, 0.5)
			stamped := min(msgs, secs/netdiag.DefaultConfig().WriteSampleInterval.Seconds())
			samples := secs / netdiag.DefaultConfig().TCPInfoInterval.Seconds()
			book, tsc, tic := ns*1e-9*msgs, ts*1e-9*stamped, sampleNs*1e-9*samples
			fmt.Printf("budget per GiB at %d-byte messages (%.2f s per GiB): bookkeeping %.5f s + timestamps %.5f s (%.0f writes) + TCP_INFO %.5f s (%.0f samples) = %.2f%% of off's %.3f CPU s/GiB\n",
				*msg, secs, book, tsc, stamped, tic, samples, 100*(book+tsc+tic)/off, off)
		}
	}
}

// writeCost returns the process CPU time per 1 KiB write through a
// monitor, with every write kernel-timestamped or with timestamps off,
// while a goroutine waits in Read on the same connection (as an
// acknowledgement reader does, and is woken by every timestamp).
func writeCost(n int, timestamps bool, dir string, log *slog.Logger) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	rcfg := netdiag.DefaultRecorderConfig(dir)
	rcfg.Buffer = 4*n + 16
	rec, err := netdiag.NewRecorder(rcfg, log)
	if err != nil {
		return 0, err
	}
	cfg := netdiag.DefaultConfig()
	cfg.TCPInfoInterval = 0
	cfg.WriteSampleInterval = 0
	cfg.KernelTimestamps = timestamps
	mon, err := netdiag.NewConnMonitor(c.(*net.TCPConn), cfg, rec, log)
	if err != nil {
		return 0, err
	}
	go func() { _, _ = mon.Read(make([]byte, 1)) }()
	buf := make([]byte, 1024)
	cpu0 := cpuSeconds()
	for range n {
		if _, err := mon.Write(buf); err != nil {
			return 0, err
		}
	}
	time.Sleep(20 * time.Millisecond) // the last ACK timestamps
	mon.Close()
	if err := rec.Close(); err != nil {
		return 0, err
	}
	return (cpuSeconds() - cpu0) * 1e9 / float64(n), nil
}

// bookkeeping measures the process CPU time the monitor spends per
// message outside the kernel's data path: recording the send, taking the
// acknowledgement, and encoding and writing the record to the log.
func bookkeeping(n int, dir string, log *slog.Logger) (perMsg, perSample float64, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, 0, err
	}
	rcfg := netdiag.DefaultRecorderConfig(dir)
	rcfg.Buffer = n + n/20 + 16
	rcfg.FlushInterval = time.Hour // encode everything at Close, measured
	rec, err := netdiag.NewRecorder(rcfg, log)
	if err != nil {
		return 0, 0, err
	}
	cfg := netdiag.DefaultConfig()
	cfg.TCPInfoInterval = 0
	mon, err := netdiag.NewConnMonitor(c.(*net.TCPConn), cfg, rec, log)
	if err != nil {
		return 0, 0, err
	}
	defer mon.Close()
	cpu0 := cpuSeconds()
	t := time.Now()
	for i := range n {
		id := uint64(i + 1)
		mon.Sent(id, uint64(i)<<20, 1<<20, t)
		if err := mon.AckedFrom(netdiag.Ack{MsgID: id, RecvUnixNano: t.UnixNano(), HandoffUnixNano: t.UnixNano()}); err != nil {
			return 0, 0, err
		}
	}
	cpu1 := cpuSeconds()
	samples := n / 20
	for range samples {
		mon.Sample()
	}
	cpu2 := cpuSeconds()
	if err := rec.Close(); err != nil { // waits for every record to be written
		return 0, 0, err
	}
	if d := rec.Dropped(); d > 0 {
		return 0, 0, fmt.Errorf("%d records dropped", d)
	}
	// The records are encoded by the writer at Close: split that time
	// between messages and samples by count.
	enc := cpuSeconds() - cpu2
	share := float64(n) / float64(n+samples)
	perMsg = (cpu1 - cpu0 + enc*share) * 1e9 / float64(n)
	perSample = (cpu2 - cpu1 + enc*(1-share)) * 1e9 / float64(samples)
	return perMsg, perSample, nil
}

func find(all []result, run int, mode string) *result {
	for i := range all {
		if all[i].run == run && all[i].mode == mode {
			return &all[i]
		}
	}
	return nil
}

func (r result) rate() float64      { return float64(r.bytes) / r.seconds / (1 << 20) }
func (r result) cpuPerGiB() float64 { return r.cpu / (float64(r.bytes) / (1 << 30)) }

// quantile returns the q-quantile of xs by linear interpolation.
func quantile(xs []float64, q float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	pos := q * float64(len(s)-1)
	i := int(pos)
	if i+1 >= len(s) {
		return s[len(s)-1]
	}
	return s[i] + (pos-float64(i))*(s[i+1]-s[i])
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "stream:", err)
	os.Exit(1)
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func run(ctx context.Context, mode string, total int64, msgSize int, dir string, log *slog.Logger) (result, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result{}, err
	}
	defer ln.Close()
	rerr := make(chan error, 1)
	go func() { rerr <- receive(ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return result{}, err
	}
	var conn net.Conn = c
	var mon *netdiag.ConnMonitor
	var rec *netdiag.Recorder
	switch mode {
	case "off", "off-again":
	case "default", "every-write", "tcpinfo":
		rec, err = netdiag.NewRecorder(netdiag.DefaultRecorderConfig(dir), log)
		if err != nil {
			return result{}, err
		}
		cfg := netdiag.DefaultConfig()
		switch mode {
		case "every-write":
			cfg.WriteSampleInterval = 0
		case "tcpinfo":
			cfg.KernelTimestamps = false
		}
		mon, err = netdiag.NewConnMonitor(c.(*net.TCPConn), cfg, rec, log)
		if err != nil {
			return result{}, err
		}
		conn = mon
	default:
		return result{}, fmt.Errorf("unknown mode %q", mode)
	}
	start, cpu0 := time.Now(), cpuSeconds()
	nmsg := total / int64(msgSize)
	acks := make(chan error, 1)
	go func() {
		b := make([]byte, netdiag.AckSize)
		for i := int64(0); i < nmsg; i++ {
			if _, err := io.ReadFull(conn, b); err != nil {
				acks <- fmt.Errorf("ack %d: %w", i, err)
				return
			}
			var a netdiag.Ack
			if err := a.UnmarshalBinary(b); err != nil {
				acks <- err
				return
			}
			if mon != nil {
				if err := mon.AckedFrom(a); err != nil {
					acks <- err
					return
				}
			}
		}
		acks <- nil
	}()
	buf := make([]byte, hdrSize+msgSize)
	for id := uint64(1); id <= uint64(nmsg); id++ {
		binary.BigEndian.PutUint64(buf, id)
		binary.BigEndian.PutUint32(buf[8:], uint32(msgSize))
		if mon != nil {
			mon.Sent(id, mon.Offset(), len(buf), time.Now())
		}
		if _, err := conn.Write(buf); err != nil {
			return result{}, err
		}
	}
	if err := <-acks; err != nil {
		return result{}, err
	}
	res := result{mode: mode, seconds: time.Since(start).Seconds(), cpu: cpuSeconds() - cpu0, bytes: nmsg * int64(msgSize)}
	if err := conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return result{}, err
	}
	if err := <-rerr; err != nil {
		return result{}, err
	}
	if rec != nil {
		if err := rec.Close(); err != nil {
			return result{}, err
		}
		if d := rec.Dropped(); d > 0 {
			return result{}, fmt.Errorf("%d records dropped", d)
		}
	}
	return res, nil
}

func receive(ln net.Listener) error {
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	hdr := make([]byte, hdrSize)
	buf := make([]byte, 1<<20)
	ack := make([]byte, 0, netdiag.AckSize)
	for {
		if _, err := io.ReadFull(c, hdr); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		left := int(binary.BigEndian.Uint32(hdr[8:]))
		for left > 0 {
			n, err := c.Read(buf[:min(left, len(buf))])
			if err != nil {
				return err
			}
			left -= n
		}
		now := time.Now()
		ack, _ = netdiag.NewAck(binary.BigEndian.Uint64(hdr), now, now).AppendBinary(ack[:0])
		if _, err := c.Write(ack); err != nil {
			return err
		}
	}
}
