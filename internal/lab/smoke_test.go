package lab

import (
	"testing"
	"time"
)

func TestSmoke(t *testing.T) {
	p, err := ParsePath("rtt 40ms")
	if err != nil {
		t.Fatal(err)
	}
	l := New(t, Config{Hosts: 2, Path: p})
	udpEcho(t, l.Host(1), 7)
	rtts := measureRTT(t, l.Host(0), l.Host(1), 7, 10)
	t.Logf("rtts %v", rtts)
	if len(rtts) < 10 || rtts[5] < 40*time.Millisecond || rtts[5] > 44*time.Millisecond {
		t.Fatalf("rtt %v", rtts)
	}
	t.Logf("%s", l.Stats(0, 1))
}
