package slolab

import (
	"reflect"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/lab"
	"github.com/holdfast/holdfast/internal/slo"
)

// Lines as tcpdump 4.99 prints them with -n -v -tt (taken from a capture
// of marked UDP datagrams on loopback).
const sampleDump = `1795551784.813793 IP (tos 0x28, ttl 64, id 60691, offset 0, flags [DF], proto UDP (17), length 128)
    127.0.0.1.49749 > 127.0.0.1.9: UDP, length 100
1795551784.814082 IP6 (class 0x20, flowlabel 0x40bb8, hlim 64, next-header UDP (17) payload length: 108) ::1.52261 > ::1.9: [bad udp cksum 0x007f -> 0xab5e!] UDP, length 100
1795551784.814284 IP6 (flowlabel 0x17648, hlim 64, next-header UDP (17) payload length: 108) ::1.50966 > ::1.9: [bad udp cksum 0x007f -> 0xb06d!] UDP, length 100
1795551784.814361 IP (tos 0x0, ttl 64, id 60692, offset 0, flags [DF], proto UDP (17), length 128)
    127.0.0.1.52118 > 127.0.0.1.9: UDP, length 100
1795551784.900000 IP (tos 0x2a,ECT(0), ttl 64, id 1, offset 0, flags [DF], proto TCP (6), length 1500)
reading from file x.pcap, link-type RAW (Raw IP), snapshot length 128
`

func TestParseMarks(t *testing.T) {
	got, err := ParseMarks([]byte(sampleDump))
	if err != nil {
		t.Fatal(err)
	}
	ts := func(us int64) time.Time { return time.Unix(1795551784, us*1000) }
	want := []Mark{
		{Time: ts(813793), DSCP: slo.DSCPAF11, Length: 128},
		{Time: ts(814082), DSCP: 8, Length: 148},
		{Time: ts(814284), DSCP: 0, Length: 148},
		{Time: ts(814361), DSCP: 0, Length: 128},
		{Time: ts(900000), DSCP: slo.DSCPAF11, Length: 1500}, // ECN bits ignored
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseMarks:\n got %+v\nwant %+v", got, want)
	}
	runs := MarkRuns(got)
	var ds []uint8
	for _, r := range runs {
		ds = append(ds, r.DSCP)
	}
	if !reflect.DeepEqual(ds, []uint8{10, 8, 0, 10}) || runs[2].Packets != 2 || !runs[2].Last.Equal(ts(814361)) {
		t.Fatalf("MarkRuns = %+v", runs)
	}
	if _, err := ParseMarks([]byte("1795551784.813793 IP (ttl 64, length 128)\n")); err == nil {
		t.Fatal("an IPv4 line without tos was accepted")
	}
}

func TestClassesMirrorPolicy(t *testing.T) {
	p := slo.DefaultPolicy()
	cs := Classes(p)
	if len(cs) != len(p.Classes) {
		t.Fatalf("%d lab classes for %d policy classes", len(cs), len(p.Classes))
	}
	// Highest first, the start class is the catch-all, scavenger takes LE.
	if cs[0].Name != "conferencing" || cs[len(cs)-1].Name != "scavenger" {
		t.Fatalf("order %+v", cs)
	}
	for _, c := range cs {
		switch c.Name {
		case p.Start:
			if len(c.DSCP) != 0 {
				t.Errorf("start class %s has DSCP list %v, want catch-all", c.Name, c.DSCP)
			}
		case "scavenger":
			if !reflect.DeepEqual(c.DSCP, []uint8{slo.DSCPCS1, slo.DSCPLE}) || c.Weight != 1 {
				t.Errorf("scavenger %+v", c)
			}
		}
	}
	if err := (lab.Sched{Mode: lab.SchedWeighted, Classes: cs}).Validate(); err != nil {
		t.Errorf("lab refuses the classes: %v", err)
	}
	w := Weights(len(p.Classes))
	for i := 1; i < len(w); i++ {
		if w[i] <= w[i-1] {
			t.Errorf("weights %v not increasing", w)
		}
	}
}
