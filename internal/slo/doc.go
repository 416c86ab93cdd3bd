// Package slo gives a task a service-level objective (a deadline, a minimum
// rate) and keeps the task's live sockets marked with the DSCP class that
// is expected to meet it.
//
// A Policy maps service classes to DSCP code points, ordered from scavenger
// up (the defaults follow RFC 4594: CS1 for scavenger, then best effort and
// AF11 to AF41; EF and the network-control code points are reserved and
// never chosen). An Objective says what the task needs. A Tagger watches the
// task's progress, and a Decider — pure, driven only by the observations it
// is given — compares the rate the objective needs (remaining bytes over
// remaining time, or the minimum rate) with the rate the task measures, and
// picks the lowest class expected to meet it:
//
//   - it raises the class when the task is behind (its measured rate would
//     finish after the deadline less a safety margin, or is under the
//     minimum rate), skipping classes already measured to be too slow,
//     and waiting instead when the most recent part of the window alone
//     moved enough (TCP recovering from before the last change);
//   - it lowers the class, one step at a time and down to scavenger, only
//     after the task has been comfortably ahead (measured rate at least
//     Policy.Ahead times the needed rate) for Policy.Hold, never to a class
//     whose recent measurement was not itself comfortably ahead, and not
//     when the task will finish within Policy.Hold anyway: that is the
//     hysteresis that keeps it from flapping.
//
// The Tagger re-marks every socket of the task (IP_TOS for IPv4,
// IPV6_TCLASS for IPv6; the TOS byte is DSCP<<2) whenever the class
// changes, logs each change with its reason, keeps the list for reports
// (Changes) and exports Prometheus metrics.
//
// Marks matter only where routers honour them. The lab's bottleneck
// (internal/lab) schedules by DSCP and stands in for such routers in the
// tests and in bench/slo.
package slo
