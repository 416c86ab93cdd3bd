// Package lab builds a WAN on one machine for tests and benchmarks: hosts
// that are network namespaces, joined through a userspace link emulator.
//
// This kernel has no netem, so the emulator runs in this process. Each host
// gets a TUN device (hf0) whose packets the emulator reads; it forwards
// every packet by its destination address over the path between the two
// hosts. A path applies, in order: random loss, a bottleneck queue limited
// in bytes with tail drop and DSCP classes (served first-in first-out, by
// strict priority or by weight), a token-bucket server at the set rate, and
// a delay line with optional jitter, timed by a timerfd so that delays are
// exact to tens of microseconds. Real kernel TCP stacks at both ends see
// that path.
//
// Host i has the addresses 198.18.0.<i+1>/15 (RFC 2544) and 2001:2::<i+1>
// (RFC 5180), reserved for benchmarking, so lab traffic can never be
// mistaken for a real network's. Namespaces are named hflab-<lab>-h<i>;
// Cleanup finds and removes those of crashed runs.
//
// A test starts a lab with New, which skips without root and closes the lab
// when the test ends:
//
//	p, _ := lab.ParsePath("rate 100Mbit, rtt 40ms, loss 0.1%")
//	l := lab.New(t, lab.Config{Hosts: 2, Path: p})
//	ln, _ := l.Host(1).Listen("tcp", ":5000")
//	c, _ := l.Host(0).Dial(ctx, "tcp", l.Host(1).AddrPort(5000).String())
//	out, _ := l.Host(0).Run(ctx, "iperf3", "-c", l.Host(1).Addr().String()).Output()
//
// Programs that are not tests use Start and Close. The emulator costs CPU:
// see docs/BENCHMARKS.md for what it forwards at most on this machine, and
// run scenarios at no more than half of that.
package lab
