package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// iperfResult is the part of iperf3's JSON report the tests read.
type iperfResult struct {
	End struct {
		SumSent struct {
			BitsPerSecond float64 `json:"bits_per_second"`
			Retransmits   int     `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		Streams []struct {
			Sender struct {
				MinRTT  int `json:"min_rtt"`
				MeanRTT int `json:"mean_rtt"`
			} `json:"sender"`
		} `json:"streams"`
	} `json:"end"`
	Error string `json:"error"`
}

// needTool skips the test when a program is missing.
func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed (Debian package %s): %v", name, name, err)
	}
}

// runIperf runs an iperf3 server on dst and a client on src for secs
// seconds (plus omit seconds of warm-up left out of the figures), with extra
// client arguments, and returns the client's report.
func runIperf(t *testing.T, src, dst *Host, port, secs, omit int, extra ...string) iperfResult {
	t.Helper()
	needTool(t, "iperf3")
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+omit+20)*time.Second)
	defer cancel()
	srv := dst.Run(ctx, "iperf3", "-s", "-1", "-B", dst.Addr().String(), "-p", strconv.Itoa(port))
	if err := srv.Start(); err != nil {
		t.Fatalf("starting iperf3 server on %s: %v", dst, err)
	}
	defer func() { _ = srv.Wait() }()
	args := append([]string{"-c", dst.Addr().String(), "-p", strconv.Itoa(port), "-J",
		"-t", strconv.Itoa(secs), "-O", strconv.Itoa(omit)}, extra...)
	var out []byte
	var err error
	for range 50 { // the server needs a moment before it listens
		out, err = src.Run(ctx, "iperf3", args...).Output()
		var r iperfResult
		if jerr := json.Unmarshal(out, &r); jerr == nil && r.Error == "" && err == nil {
			return r
		} else if jerr == nil && r.Error != "" {
			err = fmt.Errorf("%w: %s", err, r.Error)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("iperf3 %s -> %s: %v\n%s", src, dst, err, out)
	return iperfResult{}
}
