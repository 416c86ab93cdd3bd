package netdiag

import (
	"fmt"
	"net"
	"strings"
	"time"
)

// Class is the verdict of the classifier.
type Class string

// Classes.
const (
	// ClassNetwork: the path limited the transfer (RTT inflation over the
	// peer's baseline, loss and retransmissions, delivery rate below the
	// path's).
	ClassNetwork Class = "network"
	// ClassReceivingApp: the receiver did not take the data fast enough
	// (receive window limited, zero window, slow hand-off).
	ClassReceivingApp Class = "receiving application"
	// ClassSendingApp: the sender had nothing to send for much of the
	// transfer (its own gaps).
	ClassSendingApp Class = "sending application"
	// ClassHealthy: enough traffic was seen and no signal fired.
	ClassHealthy Class = "healthy"
	// ClassInsufficient: too little traffic in the window to judge.
	ClassInsufficient Class = "insufficient data"
)

// Thresholds are the classifier's trip points.
type Thresholds struct {
	// MinActive and MinBytes: less active sending time or fewer bytes
	// acknowledged give ClassInsufficient.
	MinActive time.Duration
	MinBytes  uint64
	// RwndShare: share of active time limited by the peer's window.
	RwndShare float64
	// ZeroWindowShare: share of active samples with a zero window.
	ZeroWindowShare float64
	// RecvQueueFullShare: share of receive-side samples with this host's
	// receive queue full (reported, not classified: see Classify).
	RecvQueueFullShare float64
	// ReceiverAppShare and MinReceiverApp: median receiver hand-off delay as
	// a share of median transit, and its smallest absolute value.
	ReceiverAppShare float64
	MinReceiverApp   time.Duration
	// ReceiverStageFactor: a message's receiver stage (TCP ACK of its last
	// byte → application ack back at the sender, which holds the time the
	// data waited in the receiver's socket buffer to be read) at least this
	// many times its wire stage (sent → TCP ACK, about one RTT), and at
	// least MinReceiverApp, over at least MinDecomposedMsgs messages, says
	// the receiver consumes slowly even when its window never closes.
	ReceiverStageFactor float64
	MinDecomposedMsgs   int
	// IdleShare: share of active time the sender had nothing to send.
	IdleShare float64
	// RetransRate and MinRetransSegs: retransmitted (not spurious) over
	// sent data segments, and the fewest retransmitted segments that count.
	// Every loss-based TCP flow loses a little at the bottleneck it fills,
	// so RetransRate fires only when the losses cost throughput (delivery
	// rate at most LossDeliveryRatio of the path's); HeavyRetransRate fires
	// on its own.
	RetransRate       float64
	LossDeliveryRatio float64
	HeavyRetransRate  float64
	MinRetransSegs    uint64
	// RTTInflation and MinRTTIncrease: median srtt over the peer's lowest
	// RTT, and the smallest absolute increase that counts. A single
	// loss-based flow can by itself double the RTT of a path buffered to one
	// bandwidth-delay product, hence the default of 2.5.
	RTTInflation   float64
	MinRTTIncrease time.Duration
	// DeliveryRatio: median delivery rate over the peer's typical (p90)
	// rate; counts only while the sender was neither idle nor window
	// limited, with at least MinDeliverySamples samples.
	DeliveryRatio      float64
	MinDeliverySamples int
}

// DefaultThresholds returns the thresholds `holdfast netdiag report` uses.
func DefaultThresholds() Thresholds {
	return Thresholds{
		MinActive:           200 * time.Millisecond,
		MinBytes:            256 << 10,
		RwndShare:           0.25,
		ZeroWindowShare:     0.10,
		RecvQueueFullShare:  0.50,
		ReceiverAppShare:    0.50,
		MinReceiverApp:      5 * time.Millisecond,
		ReceiverStageFactor: 2,
		MinDecomposedMsgs:   5,
		IdleShare:           0.25,
		RetransRate:         0.005,
		LossDeliveryRatio:   0.7,
		HeavyRetransRate:    0.03,
		MinRetransSegs:      3,
		RTTInflation:        2.5,
		MinRTTIncrease:      5 * time.Millisecond,
		DeliveryRatio:       0.25,
		MinDeliverySamples:  5,
	}
}

// Validate reports thresholds that cannot work.
func (t Thresholds) Validate() error {
	for name, v := range map[string]float64{
		"RwndShare": t.RwndShare, "ZeroWindowShare": t.ZeroWindowShare,
		"RecvQueueFullShare": t.RecvQueueFullShare, "ReceiverAppShare": t.ReceiverAppShare,
		"IdleShare": t.IdleShare, "RetransRate": t.RetransRate, "DeliveryRatio": t.DeliveryRatio,
		"LossDeliveryRatio": t.LossDeliveryRatio, "HeavyRetransRate": t.HeavyRetransRate,
	} {
		if v <= 0 || v > 1 {
			return fmt.Errorf("threshold %s %v: must be in (0, 1]", name, v)
		}
	}
	if t.ReceiverStageFactor <= 0 {
		return fmt.Errorf("threshold ReceiverStageFactor %v: must be positive", t.ReceiverStageFactor)
	}
	if t.RTTInflation <= 1 {
		return fmt.Errorf("threshold RTTInflation %v: must be above 1", t.RTTInflation)
	}
	return nil
}

// Evidence is one figure the classifier looked at.
type Evidence struct {
	Class     Class   `json:"class"`
	Signal    string  `json:"signal"`
	Value     float64 `json:"value"`
	Threshold float64 `json:"threshold"`
	Unit      string  `json:"unit"`
	Fired     bool    `json:"fired"`
	// Text says it in words with the figures.
	Text string `json:"text"`
}

// Verdict is the classifier's answer for one peer.
type Verdict struct {
	Peer  string  `json:"peer"`
	Class Class   `json:"class"`
	Also  []Class `json:"also,omitempty"`
	// Scores are the share of active time each fired class explains:
	// receiving = window-limited (or zero-window, full-queue, hand-off)
	// share; sending = idle share; network = the rest of the active time,
	// when the sender had data and the window allowed it.
	Scores   map[Class]float64 `json:"scores,omitempty"`
	Evidence []Evidence        `json:"evidence"`
	Summary  PeerSummary       `json:"summary"`
}

// Classify decides what limited the traffic to one peer. It is a pure
// function of the summary. Every signal is reported as evidence, fired or
// not; among the classes with a fired signal, the verdict is the one whose
// score (share of active time it explains) is largest, the others are
// listed in Also. No fired signal with enough traffic is ClassHealthy.
func Classify(s PeerSummary, t Thresholds) Verdict {
	v := Verdict{Peer: s.Peer, Summary: s, Scores: map[Class]float64{}}
	add := func(c Class, signal string, value, threshold float64, unit string, fired bool, format string, args ...any) {
		v.Evidence = append(v.Evidence, Evidence{Class: c, Signal: signal, Value: value, Threshold: threshold,
			Unit: unit, Fired: fired, Text: fmt.Sprintf(format, args...)})
	}
	if s.ActiveSeconds < t.MinActive.Seconds() || s.BytesAcked < t.MinBytes {
		add(ClassInsufficient, "active_time", s.ActiveSeconds, t.MinActive.Seconds(), "s", true,
			"%.2f s of active sending and %s acknowledged (need %v and %s)",
			s.ActiveSeconds, fmtBytes(float64(s.BytesAcked)), t.MinActive, fmtBytes(float64(t.MinBytes)))
		v.Class = ClassInsufficient
		return v
	}

	// Receiving application.
	recvScore := 0.0
	fired := s.RwndLimitedShare >= t.RwndShare
	add(ClassReceivingApp, "rwnd_limited", s.RwndLimitedShare, t.RwndShare, "share", fired,
		"limited by the receiver's window %.0f%% of active time (threshold %.0f%%)", s.RwndLimitedShare*100, t.RwndShare*100)
	if fired {
		recvScore = max(recvScore, s.RwndLimitedShare)
	}
	fired = s.ZeroWindowShare >= t.ZeroWindowShare && s.ZeroWindowSamples > 0
	add(ClassReceivingApp, "zero_window", s.ZeroWindowShare, t.ZeroWindowShare, "share", fired,
		"zero window in %d of %d samples (%d events)", s.ZeroWindowSamples, s.ActiveSamples, s.ZeroWindowEvents)
	if fired {
		recvScore = max(recvScore, s.ZeroWindowShare)
	}
	if s.RecvSamples > 0 {
		// The receive queue measured here is the monitoring host's own: it
		// says this host's reader fell behind, not the peer. It is reported
		// as a figure and never fires for the peer.
		add(ClassReceivingApp, "local_recvq_full", s.RecvQueueFullShare, t.RecvQueueFullShare, "share", false,
			"note: this host's own receive queue was at least %.0f%% of SO_RCVBUF in %d of %d receiving samples",
			recvQueueFullFraction*100, s.RecvQueueFullSamples, s.RecvSamples)
	}
	if s.Msgs > 0 {
		fired = s.ReceiverAppShare >= t.ReceiverAppShare && s.ReceiverAppP50 >= t.MinReceiverApp
		add(ClassReceivingApp, "slow_handoff", s.ReceiverAppShare, t.ReceiverAppShare, "share", fired,
			"receiver hand-off p50 %v of transit p50 %v (%.0f%%; network part p50 %v) over %d messages",
			rd(s.ReceiverAppP50), rd(s.TransitP50), s.ReceiverAppShare*100, rd(s.NetworkP50), s.Msgs)
		if fired {
			recvScore = max(recvScore, s.ReceiverAppShare)
		}
	}

	if s.MsgDecomposed > 0 {
		stage := s.MsgWireP50 + s.MsgReceiverP50
		share := 0.0
		if stage > 0 {
			share = float64(s.MsgReceiverP50) / float64(stage)
		}
		fired = s.MsgDecomposed >= t.MinDecomposedMsgs && s.MsgReceiverP50 >= t.MinReceiverApp &&
			float64(s.MsgReceiverP50) >= t.ReceiverStageFactor*float64(s.MsgWireP50)
		add(ClassReceivingApp, "slow_consumer", float64(s.MsgReceiverP50)/float64(max(s.MsgWireP50, 1)), t.ReceiverStageFactor, "ratio", fired,
			"receiver stage p50 %v (TCP ACK → application ack) is %.1fx the wire stage p50 %v (threshold %.1fx and %v) over %d messages",
			rd(s.MsgReceiverP50), float64(s.MsgReceiverP50)/float64(max(s.MsgWireP50, 1)), rd(s.MsgWireP50), t.ReceiverStageFactor, t.MinReceiverApp, s.MsgDecomposed)
		if fired {
			recvScore = max(recvScore, share)
		}
	}

	// Sending application.
	fired = s.IdleShare >= t.IdleShare
	add(ClassSendingApp, "sender_idle", s.IdleShare, t.IdleShare, "share", fired,
		"sender had nothing to send %.0f%% of active time (threshold %.0f%%); longest gap between writes %v",
		s.IdleShare*100, t.IdleShare*100, rd(s.LongestWriteGap))
	sendScore := 0.0
	if fired {
		sendScore = s.IdleShare
	}

	// Network.
	netFired := false
	costly := s.DeliveryRatio > 0 && s.DeliveryRatio <= t.LossDeliveryRatio
	enough := s.RetransSegs >= t.MinRetransSegs
	fired = enough && (s.RetransRate >= t.HeavyRetransRate || (s.RetransRate >= t.RetransRate && costly))
	add(ClassNetwork, "retransmits", s.RetransRate, t.RetransRate, "ratio", fired,
		"%.2f%% of segments retransmitted after slow start (%d of %d; not counted: %d spurious per D-SACK, %d in the initial slow start; fires at %.2f%% with delivery at most %.0f%% of the path's, or at %.1f%%)",
		s.RetransRate*100, s.RetransSegs, s.DataSegsOut, s.SpuriousRetransSegs, s.SlowStartRetransSegs,
		t.RetransRate*100, t.LossDeliveryRatio*100, t.HeavyRetransRate*100)
	netFired = netFired || fired
	incr := time.Duration((s.SRTTP50us - s.BaselineRTTus) * 1e3)
	// A receiver that does not read delays its ACKs, which inflates srtt
	// on any path: with receiving-application evidence, inflation is shown
	// but does not count.
	fired = s.RTTInflation >= t.RTTInflation && incr >= t.MinRTTIncrease && recvScore == 0
	if s.SRTTP50us > 0 {
		add(ClassNetwork, "rtt_inflation", s.RTTInflation, t.RTTInflation, "ratio", fired,
			"srtt p50 %v is %.1fx the peer's baseline %v (+%v; threshold %.1fx and +%v)",
			usDur(s.SRTTP50us), s.RTTInflation, usDur(s.BaselineRTTus), rd(incr), t.RTTInflation, t.MinRTTIncrease)
	} else {
		add(ClassNetwork, "rtt_inflation", 0, t.RTTInflation, "ratio", false,
			"no srtt sample taken while the sender was busy and the window open (baseline %v)", usDur(s.BaselineRTTus))
	}
	netFired = netFired || fired
	windowFree := s.RwndLimitedShare < t.RwndShare && s.IdleShare < t.IdleShare
	if s.DeliveryRatio > 0 {
		fired = windowFree && s.DeliveryBaselineFromHistory && s.ActiveSamples >= t.MinDeliverySamples && s.DeliveryRatio <= t.DeliveryRatio
		from := "before the window"
		if !s.DeliveryBaselineFromHistory {
			from = "in the window itself; no history before it, so this cannot fire alone"
		}
		add(ClassNetwork, "delivery_rate", s.DeliveryRatio, t.DeliveryRatio, "ratio", fired,
			"delivery rate p50 %s/s is %.0f%% of the path's %s/s (p90 %s; threshold %.0f%%, counted only when not window- or sender-limited)",
			fmtBytes(s.DeliveryP50), s.DeliveryRatio*100, fmtBytes(s.BaselineDelivery), from, t.DeliveryRatio*100)
		netFired = netFired || fired
	}
	netScore := 0.0
	if netFired {
		netScore = max(clamp01(1-s.IdleShare-s.RwndLimitedShare), 1e-9)
	}

	for c, sc := range map[Class]float64{ClassReceivingApp: recvScore, ClassSendingApp: sendScore, ClassNetwork: netScore} {
		if sc > 0 {
			v.Scores[c] = sc
		}
	}
	if len(v.Scores) == 0 {
		v.Class = ClassHealthy
		return v
	}
	order := []Class{ClassReceivingApp, ClassSendingApp, ClassNetwork} // tie-break order
	best := order[0]
	for _, c := range order {
		if v.Scores[c] > v.Scores[best] {
			best = c
		}
	}
	v.Class = best
	for _, c := range order {
		if c != best && v.Scores[c] > 0 {
			v.Also = append(v.Also, c)
		}
	}
	return v
}

// Fired returns the evidence that fired for class c.
func (v Verdict) Fired(c Class) []Evidence {
	var out []Evidence
	for _, e := range v.Evidence {
		if e.Fired && e.Class == c {
			out = append(out, e)
		}
	}
	return out
}

// MatchPeer reports whether the peer label matches the filter: equal, or
// the filter is the host part of the peer's host:port.
func MatchPeer(peer, filter string) bool {
	if peer == filter {
		return true
	}
	if host, _, err := net.SplitHostPort(peer); err == nil {
		return host == strings.Trim(filter, "[]")
	}
	return false
}

func rd(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

func usDur(us float64) time.Duration { return rd(time.Duration(us * 1e3)) }

func fmtBytes(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f %s", b, units[i])
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}
