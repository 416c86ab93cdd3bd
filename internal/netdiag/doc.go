// Package netdiag owns holdfast's network problem detection: it measures
// what happens to every byte an application writes on a TCP connection and
// tells a network problem from an application problem.
//
// A [ConnMonitor] wraps one TCP connection. For every write it records the
// byte range and the time of the write, and asks the kernel for the three
// software transmit timestamps of the write's last byte (SO_TIMESTAMPING with
// OPT_ID: scheduled into the queueing layer, handed to the device, and
// cumulatively acknowledged by the peer), read back from the socket error
// queue. That gives, per write, its queueing time in the sender's kernel and
// its time to acknowledgement. A sampler reads TCP_INFO (srtt, rttvar,
// retransmissions, bytes acked, delivery rate, zero-window and the kernel's
// own "who limited this connection" chronographs) at a configurable interval.
// Applications that exchange acknowledged messages (holdfast's bulk
// transfer) also report each message with [ConnMonitor.Sent] and the
// receiver's [Ack] with [ConnMonitor.Acked], so the transit latency of every
// message is split into network time and receiving-application time without
// assuming synchronised clocks.
//
// Every measurement is a [Record], appended by a [Recorder] to JSON-lines
// files in a size-bounded, rotated log directory. [Summarize] folds records
// into per-peer figures and [Classify] (a pure function) turns them into a
// [Verdict]: network, receiving application, sending application or healthy,
// with the evidence in figures. The measuring TCP proxy for applications
// that are not holdfast lives in the subpackage netdiag/proxy.
package netdiag
