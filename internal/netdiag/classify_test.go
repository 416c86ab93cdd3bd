package netdiag

import (
	"testing"
	"time"
)

// busy returns a summary of a transfer with enough traffic and no signal.
func busy() PeerSummary {
	return PeerSummary{
		Peer: "198.18.0.2:7000", Conns: 1,
		ActiveSeconds: 2, BytesAcked: 10 << 20, BytesSent: 10 << 20, DataSegsOut: 7000,
		SRTTP50us: 11000, BaselineRTTus: 10000, RTTInflation: 1.1,
		DeliveryP50: 5e6, BaselineDelivery: 5.5e6, DeliveryRatio: 0.9, DeliveryBaselineFromHistory: true,
		ActiveSamples: 100,
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*PeerSummary)
		want    Class
		signals []string // must have fired
		quiet   []string // must not have fired
		also    []Class
	}{
		{"healthy", func(s *PeerSummary) {}, ClassHealthy, nil, []string{"retransmits", "rtt_inflation", "delivery_rate", "sender_idle", "rwnd_limited"}, nil},
		{"too little traffic", func(s *PeerSummary) { s.ActiveSeconds = 0.1 }, ClassInsufficient, nil, nil, nil},
		{"too few bytes", func(s *PeerSummary) { s.BytesAcked = 1000 }, ClassInsufficient, nil, nil, nil},
		{"window limited", func(s *PeerSummary) { s.RwndLimitedShare = 0.6 }, ClassReceivingApp, []string{"rwnd_limited"}, nil, nil},
		{"zero window", func(s *PeerSummary) { s.ZeroWindowSamples, s.ZeroWindowShare = 20, 0.2 }, ClassReceivingApp, []string{"zero_window"}, nil, nil},
		{"slow hand-off", func(s *PeerSummary) {
			s.Msgs, s.ReceiverAppP50, s.TransitP50, s.ReceiverAppShare = 50, 30*time.Millisecond, 40*time.Millisecond, 0.75
		}, ClassReceivingApp, []string{"slow_handoff"}, nil, nil},
		{"hand-off short in absolute terms", func(s *PeerSummary) {
			s.Msgs, s.ReceiverAppP50, s.TransitP50, s.ReceiverAppShare = 50, 300*time.Microsecond, 400*time.Microsecond, 0.75
		}, ClassHealthy, nil, []string{"slow_handoff"}, nil},
		{"slow consumer", func(s *PeerSummary) {
			s.MsgDecomposed, s.MsgReceiverP50, s.MsgWireP50 = 20, 80*time.Millisecond, 20*time.Millisecond
		}, ClassReceivingApp, []string{"slow_consumer"}, nil, nil},
		{"consumer stage is one way back", func(s *PeerSummary) {
			s.MsgDecomposed, s.MsgReceiverP50, s.MsgWireP50 = 20, 10*time.Millisecond, 20*time.Millisecond
		}, ClassHealthy, nil, []string{"slow_consumer"}, nil},
		{"sender idle", func(s *PeerSummary) { s.IdleShare = 0.7 }, ClassSendingApp, []string{"sender_idle"}, nil, nil},
		{"heavy loss", func(s *PeerSummary) { s.RetransSegs, s.RetransRate = 400, 0.05 }, ClassNetwork, []string{"retransmits"}, nil, nil},
		{"loss at full rate is TCP filling the pipe", func(s *PeerSummary) { s.RetransSegs, s.RetransRate = 70, 0.01 }, ClassHealthy, nil, []string{"retransmits"}, nil},
		{"loss that costs throughput", func(s *PeerSummary) {
			s.RetransSegs, s.RetransRate, s.DeliveryRatio = 70, 0.01, 0.5
		}, ClassNetwork, []string{"retransmits"}, []string{"delivery_rate"}, nil},
		{"too few retransmissions", func(s *PeerSummary) { s.RetransSegs, s.RetransRate = 2, 0.5 }, ClassHealthy, nil, []string{"retransmits"}, nil},
		{"rtt inflation", func(s *PeerSummary) { s.SRTTP50us, s.RTTInflation = 60000, 6 }, ClassNetwork, []string{"rtt_inflation"}, nil, nil},
		{"inflation below absolute floor", func(s *PeerSummary) {
			s.SRTTP50us, s.BaselineRTTus, s.RTTInflation = 300, 10, 30
		}, ClassHealthy, nil, []string{"rtt_inflation"}, nil},
		{"inflation with a slow receiver does not count", func(s *PeerSummary) {
			s.SRTTP50us, s.RTTInflation, s.RwndLimitedShare = 60000, 6, 0.5
		}, ClassReceivingApp, []string{"rwnd_limited"}, []string{"rtt_inflation"}, nil},
		{"delivery collapse against history", func(s *PeerSummary) { s.DeliveryRatio = 0.1 }, ClassNetwork, []string{"delivery_rate"}, nil, nil},
		{"delivery against itself cannot fire alone", func(s *PeerSummary) {
			s.DeliveryRatio, s.DeliveryBaselineFromHistory = 0.1, false
		}, ClassHealthy, nil, []string{"delivery_rate"}, nil},
		{"delivery low because the sender idles", func(s *PeerSummary) { s.DeliveryRatio, s.IdleShare = 0.1, 0.6 }, ClassSendingApp, nil, []string{"delivery_rate"}, nil},
		{"network dominates idle", func(s *PeerSummary) {
			s.IdleShare, s.RetransSegs, s.RetransRate = 0.3, 400, 0.05
		}, ClassNetwork, []string{"retransmits", "sender_idle"}, nil, []Class{ClassSendingApp}},
		{"idle dominates network", func(s *PeerSummary) {
			s.IdleShare, s.RetransSegs, s.RetransRate = 0.8, 400, 0.05
		}, ClassSendingApp, []string{"retransmits", "sender_idle"}, nil, []Class{ClassNetwork}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := busy()
			tt.mod(&s)
			v := Classify(s, DefaultThresholds())
			if v.Class != tt.want {
				t.Fatalf("class %q, want %q; evidence %+v", v.Class, tt.want, v.Evidence)
			}
			fired := map[string]bool{}
			for _, e := range v.Evidence {
				if e.Fired {
					fired[e.Signal] = true
				}
				if e.Text == "" {
					t.Errorf("evidence %s has no text", e.Signal)
				}
			}
			for _, sig := range tt.signals {
				if !fired[sig] {
					t.Errorf("signal %s did not fire", sig)
				}
			}
			for _, sig := range tt.quiet {
				if fired[sig] {
					t.Errorf("signal %s fired", sig)
				}
			}
			if len(v.Also) != len(tt.also) {
				t.Fatalf("also %v, want %v", v.Also, tt.also)
			}
			for i := range tt.also {
				if v.Also[i] != tt.also[i] {
					t.Errorf("also %v, want %v", v.Also, tt.also)
				}
			}
		})
	}
}

func TestThresholdsValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Thresholds)
		ok   bool
	}{
		{"defaults", func(*Thresholds) {}, true},
		{"share above one", func(th *Thresholds) { th.IdleShare = 1.5 }, false},
		{"zero share", func(th *Thresholds) { th.RwndShare = 0 }, false},
		{"inflation not above one", func(th *Thresholds) { th.RTTInflation = 1 }, false},
		{"stage factor zero", func(th *Thresholds) { th.ReceiverStageFactor = 0 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			th := DefaultThresholds()
			tt.mod(&th)
			if err := th.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestMatchPeer(t *testing.T) {
	tests := []struct {
		peer, filter string
		want         bool
	}{
		{"198.18.0.2:7000", "198.18.0.2:7000", true},
		{"198.18.0.2:7000", "198.18.0.2", true},
		{"198.18.0.2:7000", "198.18.0.3", false},
		{"198.18.0.2:7000", "198.18.0.2:7001", false},
		{"[2001:2::2]:80", "2001:2::2", true},
		{"[2001:2::2]:80", "[2001:2::2]", true},
		{"bulk-site-b", "bulk-site-b", true},
		{"bulk-site-b", "bulk", false},
	}
	for _, tt := range tests {
		if got := MatchPeer(tt.peer, tt.filter); got != tt.want {
			t.Errorf("MatchPeer(%q, %q) = %v, want %v", tt.peer, tt.filter, got, tt.want)
		}
	}
}
