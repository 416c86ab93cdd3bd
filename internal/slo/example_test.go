package slo_test

import (
	"fmt"
	"time"

	"github.com/holdfast/holdfast/internal/slo"
)

// A Decider fed with observations of a task that needs 8 Mbit/s but gets
// 4 Mbit/s in its start class and 12 Mbit/s above: it is raised once, when
// the start class has settled, and stays.
func ExampleDecider() {
	start := time.Date(2026, 11, 25, 1, 0, 0, 0, time.UTC)
	obj, _ := slo.ParseObjective("20s", "", start) // 18 MB in 20 s less a 10% margin: 8 Mbit/s
	p := slo.DefaultPolicy()
	d := slo.NewDecider(obj, p)
	var done int64
	for el := time.Duration(0); el <= 10*time.Second; el += p.Interval {
		dec := d.Observe(slo.Observation{Now: start.Add(el), Done: done, Total: 18_000_000})
		if dec.Changed {
			fmt.Printf("%v: %s -> %s (%s)\n", el, p.Classes[dec.From].Name, p.Classes[dec.To].Name, slo.DSCPName(p.Classes[dec.To].DSCP))
		}
		rate := int64(1_500_000) // bytes per second: 12 Mbit/s
		if d.Class() == p.ClassIndex("standard") {
			rate = 500_000 // 4 Mbit/s
		}
		done += rate * int64(p.Interval) / int64(time.Second)
	}
	// Output:
	// 1.25s: standard -> high-throughput (AF11)
}

func ExampleParseObjective() {
	now := time.Date(2026, 11, 24, 22, 0, 0, 0, time.UTC)
	for _, f := range [][2]string{{"10m", ""}, {"2026-11-25T02:00Z", "50Mbit"}, {"", "6MB/s"}, {"yesterday", ""}} {
		o, err := slo.ParseObjective(f[0], f[1], now)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Println(o)
	}
	// Output:
	// deadline 2026-11-24T22:10:00Z
	// deadline 2026-11-25T02:00:00Z, min rate 50Mbit/s
	// min rate 48Mbit/s
	// error: bad objective: deadline "yesterday": want a duration ("10m") or a time with a zone ("2026-11-25T02:00Z")
}
