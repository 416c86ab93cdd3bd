package lab_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/lab"
)

func ExampleParsePath() {
	p, err := lab.ParsePath("rate 200Mbit, rtt 100ms, loss 0.1%, queue 64KiB")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(p.Rate, p.Delay, p.Loss, p.QueueBytes)
	fmt.Println(p)
	// Output:
	// 200000000 50ms 0.001 65536
	// rate 200Mbit, delay 50ms, loss 0.1%, queue 65536B
}

// A test gets two hosts joined by a 100 ms, 50 Mbit/s path, runs a server
// on one and connects to it from the other.
func ExampleNew() {
	var t testing.TB // the test's *testing.T
	p, _ := lab.ParsePath("rate 50Mbit, rtt 100ms, queue 128KiB")
	l := lab.New(t, lab.Config{Hosts: 2, Path: p}) // skips without root; closed at the end of the test

	srv, cli := l.Host(1), l.Host(0)
	ln, err := srv.Listen("tcp", srv.AddrPort(8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := cli.Dial(context.Background(), "tcp", srv.AddrPort(8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Outside programs run in a host's namespace.
	out, err := cli.Run(context.Background(), "iperf3", "-c", srv.Addr().String(), "-t", "5").CombinedOutput()
	t.Log(string(out), err)
}

// Programs other than tests start and close a lab themselves.
func ExampleStart() {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg := lab.DefaultConfig()
	cfg.Hosts = 3
	l, err := lab.Start(context.Background(), cfg, logger)
	if err != nil {
		logger.Error("no lab", "err", err)
		return
	}
	defer l.Close()
	for _, h := range l.Hosts() {
		fmt.Printf("ip netns exec %s ...  # %s\n", h.Name(), h.Addr())
	}
}

// SetPath changes a pair's path while traffic flows; SetLink changes one
// direction.
func ExampleLab_SetPath() {
	var t testing.TB
	l := lab.New(t, lab.Config{Hosts: 3})
	worse, _ := lab.ParsePath("rtt 300ms, loss 2%")
	if err := l.SetPath(0, 2, worse); err != nil {
		t.Fatal(err)
	}
	uplink := lab.Path{Rate: 10_000_000, Delay: 20 * time.Millisecond}
	if err := l.SetLink(0, 1, uplink); err != nil {
		t.Fatal(err)
	}
}

// Stats reports per-DSCP-class counters of one direction.
func ExampleLab_Stats() {
	var t testing.TB
	p, _ := lab.ParsePath("rate 20Mbit, rtt 40ms, sched strict")
	l := lab.New(t, lab.Config{Hosts: 2, Path: p})
	// ... traffic ...
	st := l.Stats(0, 1)
	for _, c := range st.Classes {
		t.Logf("%s: out %d pkts, %d tail drops, max queue %d B", c.Class, c.OutPackets, c.QueueDrops, c.MaxQueueBytes)
	}
	t.Log(st.Class("realtime").Drops(), st.Total.MaxQueueBytes)
}

// Host.Do runs Go code inside a host's namespace.
func ExampleHost_Do() {
	var t testing.TB
	l := lab.New(t, lab.DefaultConfig())
	err := l.Host(0).Do(func() error {
		// Sockets made here belong to host 0.
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Cleanup removes what crashed labs left behind.
func ExampleCleanup() {
	removed, err := lab.Cleanup(slog.Default())
	fmt.Println(removed, err)
}

func ExampleParsePairPath() {
	pp, err := lab.ParsePairPath("0>2: rtt 300ms, loss 2%, lossburst 3")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(pp.A, pp.B, pp.OneWay, pp.Path)
	// Output:
	// 0 2 true delay 150ms, loss 2%, lossburst 3
}
