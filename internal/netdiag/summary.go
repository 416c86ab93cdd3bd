package netdiag

import (
	"slices"
	"sort"
	"time"
)

// PeerSummary holds the figures of all monitored connections to one peer
// within a time window, plus the peer's baseline from the whole log.
// Shares are fractions (0..1) of the active sending time: the time between
// the first and the last TCP_INFO sample that saw new bytes acknowledged.
type PeerSummary struct {
	Peer  string `json:"peer"`
	Conns int    `json:"conns"`
	From  int64  `json:"from"`
	To    int64  `json:"to"`

	// Sending side, from TCP_INFO.
	ActiveSeconds float64 `json:"active_s"`
	BytesAcked    uint64  `json:"bytes_acked"`
	BytesSent     uint64  `json:"bytes_sent"`
	BytesRetrans  uint64  `json:"bytes_retrans"`
	// RetransSegs excludes SpuriousRetransSegs (retransmissions the peer
	// reported as duplicates with D-SACK) and SlowStartRetransSegs;
	// RetransRate is RetransSegs over DataSegsOut, both counted from the
	// end of the initial slow start.
	RetransSegs         uint64 `json:"retrans_segs"`
	SpuriousRetransSegs uint64 `json:"spurious_retrans_segs"`
	// SlowStartRetransSegs are the retransmissions of the initial slow
	// start and its recovery, left out of RetransSegs.
	SlowStartRetransSegs uint64  `json:"slow_start_retrans_segs"`
	DataSegsOut          uint64  `json:"data_segs_out"`
	RetransRate          float64 `json:"retrans_rate"`
	IdleShare            float64 `json:"idle_share"`
	RwndLimitedShare     float64 `json:"rwnd_limited_share"`
	SndbufLimitedShare   float64 `json:"sndbuf_limited_share"`
	SRTTP50us            float64 `json:"srtt_p50_us"`
	SRTTP90us            float64 `json:"srtt_p90_us"`
	RTTVarP50us          float64 `json:"rttvar_p50_us"`
	BaselineRTTus        float64 `json:"baseline_rtt_us"`
	RTTInflation         float64 `json:"rtt_inflation"`
	DeliveryP50          float64 `json:"delivery_p50_Bps"`
	BaselineDelivery     float64 `json:"baseline_delivery_Bps"`
	DeliveryRatio        float64 `json:"delivery_ratio"`
	// DeliveryBaselineFromHistory says the delivery baseline comes from
	// records before the window; otherwise it is the window's own p90.
	DeliveryBaselineFromHistory bool    `json:"delivery_baseline_from_history"`
	ActiveSamples               int     `json:"active_samples"`
	ZeroWindowSamples           int     `json:"zero_window_samples"`
	ZeroWindowEvents            int     `json:"zero_window_events"`
	ZeroWindowShare             float64 `json:"zero_window_share"`

	// Receiving side, from TCP_INFO and SIOCINQ on connections that read.
	RecvSamples          int     `json:"recv_samples"`
	RecvQueueFullSamples int     `json:"recvq_full_samples"`
	RecvQueueFullShare   float64 `json:"recvq_full_share"`

	// Writes with kernel timestamps.
	Writes           int           `json:"writes"`
	KernelQueueP50   time.Duration `json:"kernel_queue_p50_ns"`
	KernelQueueP90   time.Duration `json:"kernel_queue_p90_ns"`
	AckTimeP50       time.Duration `json:"ack_time_p50_ns"`
	AckTimeP90       time.Duration `json:"ack_time_p90_ns"`
	LongestWriteGap  time.Duration `json:"longest_write_gap_ns"`
	WriteIdleSeconds float64       `json:"write_idle_s"`

	// Acknowledged application messages.
	Msgs             int           `json:"msgs"`
	TransitP50       time.Duration `json:"transit_p50_ns"`
	TransitP90       time.Duration `json:"transit_p90_ns"`
	ReceiverAppP50   time.Duration `json:"receiver_app_p50_ns"`
	ReceiverAppP90   time.Duration `json:"receiver_app_p90_ns"`
	NetworkP50       time.Duration `json:"network_p50_ns"`
	NetworkP90       time.Duration `json:"network_p90_ns"`
	ReceiverAppShare float64       `json:"receiver_app_share"`
	// For messages whose last byte ends a timestamped write, the transit
	// splits on the sender's clock alone into: sender queue (message handed
	// over → last byte sent by the kernel), wire (sent → TCP ACK) and
	// receiver (TCP ACK → application ack arrives: reading, hand-off and the
	// ack's way back). MsgDecomposed counts those messages.
	MsgDecomposed     int           `json:"msg_decomposed"`
	MsgSenderQueueP50 time.Duration `json:"msg_sender_queue_p50_ns"`
	MsgWireP50        time.Duration `json:"msg_wire_p50_ns"`
	MsgReceiverP50    time.Duration `json:"msg_receiver_p50_ns"`
}

// recvQueueFullFraction: a receive queue holding at least this fraction of
// SO_RCVBUF counts as full (the kernel reports twice the usable buffer, and
// by default advertises about half of it as window).
const recvQueueFullFraction = 0.25

// minHistoryDeliverySamples is how many delivery-rate samples from before
// the window make a history baseline.
const minHistoryDeliverySamples = 5

// An interval between two TCP_INFO samples describes the path (its srtt
// and delivery rate are used) when the sender was busy for at least
// pathIntervalBusy of it and window-limited for less than pathIntervalRwnd.
const (
	pathIntervalBusy = 0.5
	pathIntervalRwnd = 0.1
)

type connData struct {
	peer    string
	samples []TCPInfoSample
	times   []int64
	writes  []WriteRecord
	msgs    []MsgRecord
}

type peerAcc struct {
	s                            PeerSummary
	busy, rwnd, sndbuf           float64
	srtt, rttvar, deliv          []float64
	kq, ackt, transit, rapp, net []time.Duration
	sq, wire, rcv                []time.Duration
	baseRTT                      uint32
	baseDeliv, histDeliv         []float64
	conns                        map[string]bool
}

// Summarize folds records into one summary per peer. Records at or after
// since (Unix ns; 0 for all) form the window; all records feed the peer's
// baseline (lowest RTT and typical delivery rate ever seen). If peer is not
// empty, only peers matching it (see MatchPeer) are summarised.
func Summarize(records []Record, since int64, peer string) []PeerSummary {
	conns := map[string]*connData{}
	accs := map[string]*peerAcc{}
	acc := func(p string) *peerAcc {
		a := accs[p]
		if a == nil {
			a = &peerAcc{s: PeerSummary{Peer: p}, conns: map[string]bool{}}
			accs[p] = a
		}
		return a
	}
	sorted := slices.Clone(records)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Time < sorted[j].Time })
	for _, r := range sorted {
		if peer != "" && !MatchPeer(r.Peer, peer) {
			continue
		}
		a := acc(r.Peer)
		// Baseline over the whole history.
		if r.TCPInfo != nil {
			if m := r.TCPInfo.MinRTTus; m > 0 && (a.baseRTT == 0 || m < a.baseRTT) {
				a.baseRTT = m
			}
			if !r.TCPInfo.AppLimited && r.TCPInfo.DeliveryRate > 0 {
				a.baseDeliv = append(a.baseDeliv, float64(r.TCPInfo.DeliveryRate))
				if r.Time < since {
					a.histDeliv = append(a.histDeliv, float64(r.TCPInfo.DeliveryRate))
				}
			}
		}
		if r.Time < since {
			continue
		}
		c := conns[r.Conn]
		if c == nil {
			c = &connData{peer: r.Peer}
			conns[r.Conn] = c
		}
		if a.s.From == 0 || r.Time < a.s.From {
			a.s.From = r.Time
		}
		a.s.To = max(a.s.To, r.Time)
		a.conns[r.Conn] = true
		switch {
		case r.TCPInfo != nil:
			c.samples = append(c.samples, *r.TCPInfo)
			c.times = append(c.times, r.Time)
		case r.Write != nil:
			c.writes = append(c.writes, *r.Write)
		case r.Msg != nil:
			c.msgs = append(c.msgs, *r.Msg)
		}
	}
	for _, c := range conns {
		addConn(acc(c.peer), c)
	}
	var out []PeerSummary
	for _, a := range accs {
		if len(a.conns) == 0 {
			continue
		}
		out = append(out, a.finish())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

func addConn(a *peerAcc, c *connData) {
	s := &a.s
	// Active sending window: from the sample before the first progress in
	// bytes_acked to the last sample with progress.
	i0, i1 := -1, -1
	for i := 1; i < len(c.samples); i++ {
		if c.samples[i].BytesAcked > c.samples[i-1].BytesAcked {
			if i0 < 0 {
				i0 = i - 1
			}
			i1 = i
		}
	}
	sndWndKnown := false
	for _, x := range c.samples {
		if x.SndWnd > 0 {
			sndWndKnown = true
			break
		}
	}
	if i0 >= 0 {
		f, l := c.samples[i0], c.samples[i1]
		span := float64(c.times[i1]-c.times[i0]) / 1e9
		s.ActiveSeconds += span
		s.BytesAcked += l.BytesAcked - f.BytesAcked
		s.BytesSent += l.BytesSent - f.BytesSent
		s.BytesRetrans += l.BytesRetrans - f.BytesRetrans
		// Losses that end the initial slow start are TCP finding the path's
		// capacity, not a property of the path: retransmissions count from
		// the first sample after that first recovery is over.
		rs := i0
		for rs <= i1 && (c.samples[rs].SndSsthresh >= InfiniteSsthresh || c.samples[rs].CAState != caStateOpen) {
			rs++
		}
		if rs > i0 {
			e := c.samples[min(rs, i1)]
			s.SlowStartRetransSegs += uint64(e.TotalRetrans - f.TotalRetrans)
		}
		if rs < i1 {
			rf := c.samples[rs]
			retr := int64(l.TotalRetrans-rf.TotalRetrans) - int64(l.DsackDups-rf.DsackDups)
			s.RetransSegs += uint64(max(retr, 0))
			s.SpuriousRetransSegs += uint64(l.DsackDups - rf.DsackDups)
			s.DataSegsOut += uint64(l.DataSegsOut - rf.DataSegsOut)
		}
		a.busy += min(float64(l.BusyUs-f.BusyUs)/1e6, span)
		a.rwnd += float64(l.RwndLimitedUs-f.RwndLimitedUs) / 1e6
		a.sndbuf += float64(l.SndbufLimitedUs-f.SndbufLimitedUs) / 1e6
		prevZero := false
		for i := i0 + 1; i <= i1; i++ {
			x, p := c.samples[i], c.samples[i-1]
			s.ActiveSamples++
			// RTT and delivery rate describe the path only over intervals
			// in which the sender was busy and the receiver's window open:
			// a closed window delays ACKs and inflates srtt on any path.
			dt := float64(c.times[i]-c.times[i-1]) / 1e3 // µs
			open := dt > 0 && float64(x.BusyUs-p.BusyUs) >= pathIntervalBusy*dt &&
				float64(x.RwndLimitedUs-p.RwndLimitedUs) < pathIntervalRwnd*dt
			if open && x.RTTus > 0 {
				a.srtt = append(a.srtt, float64(x.RTTus))
				a.rttvar = append(a.rttvar, float64(x.RTTVarus))
			}
			if open && !x.AppLimited && x.DeliveryRate > 0 {
				a.deliv = append(a.deliv, float64(x.DeliveryRate))
			}
			zero := sndWndKnown && x.SndWnd == 0
			if zero {
				s.ZeroWindowSamples++
				if !prevZero {
					s.ZeroWindowEvents++
				}
			}
			prevZero = zero
		}
	}
	for i, x := range c.samples {
		if x.RecvQueue > 0 || (i > 0 && x.BytesRecv > c.samples[i-1].BytesRecv) {
			s.RecvSamples++
			if x.RecvBuf > 0 && float64(x.RecvQueue) >= recvQueueFullFraction*float64(x.RecvBuf) {
				s.RecvQueueFullSamples++
			}
		}
	}
	sort.Slice(c.writes, func(i, j int) bool { return c.writes[i].Offset < c.writes[j].Offset })
	for i, w := range c.writes {
		s.Writes++
		if w.Sent > 0 {
			a.kq = append(a.kq, w.KernelQueue())
		}
		if w.Acked > 0 && w.Sent > 0 {
			a.ackt = append(a.ackt, w.AckTime())
		}
		if i > 0 {
			p := c.writes[i-1]
			s.LongestWriteGap = max(s.LongestWriteGap, time.Duration(w.Start-p.End))
			// Idle: the previous write was fully acknowledged and the
			// application had not yet written the next one.
			if p.Acked > 0 && w.Start > p.Acked {
				s.WriteIdleSeconds += float64(w.Start-p.Acked) / 1e9
			}
		}
	}
	byEnd := make(map[uint64]WriteRecord, len(c.writes))
	for _, w := range c.writes {
		if w.Sent > 0 && w.Acked > 0 {
			byEnd[w.Offset+uint64(w.Size)] = w
		}
	}
	for _, m := range c.msgs {
		end := m.End
		if end == 0 {
			end = m.Offset + uint64(m.Size)
		}
		if w, ok := byEnd[end]; ok && w.Sent >= m.SentAt && m.AckedAt >= w.Acked {
			a.sq = append(a.sq, time.Duration(w.Sent-m.SentAt))
			a.wire = append(a.wire, time.Duration(w.Acked-w.Sent))
			a.rcv = append(a.rcv, time.Duration(m.AckedAt-w.Acked))
		}
		s.Msgs++
		a.transit = append(a.transit, time.Duration(m.Transit))
		a.rapp = append(a.rapp, time.Duration(m.ReceiverApp))
		a.net = append(a.net, time.Duration(m.Network))
	}
}

func (a *peerAcc) finish() PeerSummary {
	s := a.s
	s.Conns = len(a.conns)
	if s.ActiveSeconds > 0 {
		s.IdleShare = clamp01(1 - a.busy/s.ActiveSeconds)
		s.RwndLimitedShare = clamp01(a.rwnd / s.ActiveSeconds)
		s.SndbufLimitedShare = clamp01(a.sndbuf / s.ActiveSeconds)
	}
	if s.DataSegsOut > 0 {
		s.RetransRate = float64(s.RetransSegs) / float64(s.DataSegsOut)
	}
	s.SRTTP50us = quantile(a.srtt, 0.5)
	s.SRTTP90us = quantile(a.srtt, 0.9)
	s.RTTVarP50us = quantile(a.rttvar, 0.5)
	s.BaselineRTTus = float64(a.baseRTT)
	if s.BaselineRTTus > 0 && s.SRTTP50us > 0 {
		s.RTTInflation = s.SRTTP50us / s.BaselineRTTus
	}
	s.DeliveryP50 = quantile(a.deliv, 0.5)
	if len(a.histDeliv) >= minHistoryDeliverySamples {
		s.BaselineDelivery = quantile(a.histDeliv, 0.9)
		s.DeliveryBaselineFromHistory = true
	} else {
		s.BaselineDelivery = quantile(a.baseDeliv, 0.9)
	}
	if s.BaselineDelivery > 0 && s.DeliveryP50 > 0 {
		s.DeliveryRatio = s.DeliveryP50 / s.BaselineDelivery
	}
	if s.ActiveSamples > 0 {
		s.ZeroWindowShare = float64(s.ZeroWindowSamples) / float64(s.ActiveSamples)
	}
	if s.RecvSamples > 0 {
		s.RecvQueueFullShare = float64(s.RecvQueueFullSamples) / float64(s.RecvSamples)
	}
	s.KernelQueueP50, s.KernelQueueP90 = durQ(a.kq, 0.5), durQ(a.kq, 0.9)
	s.AckTimeP50, s.AckTimeP90 = durQ(a.ackt, 0.5), durQ(a.ackt, 0.9)
	s.TransitP50, s.TransitP90 = durQ(a.transit, 0.5), durQ(a.transit, 0.9)
	s.ReceiverAppP50, s.ReceiverAppP90 = durQ(a.rapp, 0.5), durQ(a.rapp, 0.9)
	s.NetworkP50, s.NetworkP90 = durQ(a.net, 0.5), durQ(a.net, 0.9)
	s.MsgSenderQueueP50 = durQ(a.sq, 0.5)
	s.MsgWireP50 = durQ(a.wire, 0.5)
	s.MsgReceiverP50 = durQ(a.rcv, 0.5)
	s.MsgDecomposed = len(a.sq)
	if s.TransitP50 > 0 {
		s.ReceiverAppShare = clamp01(float64(s.ReceiverAppP50) / float64(s.TransitP50))
	}
	return s
}

func clamp01(x float64) float64 { return min(max(x, 0), 1) }

// quantile returns the q-quantile (nearest rank) of xs, 0 if empty.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(q*float64(len(s)-1) + 0.5)
	return s[min(max(i, 0), len(s)-1)]
}

func durQ(xs []time.Duration, q float64) time.Duration {
	f := make([]float64, len(xs))
	for i, x := range xs {
		f[i] = float64(x)
	}
	return time.Duration(quantile(f, q))
}
