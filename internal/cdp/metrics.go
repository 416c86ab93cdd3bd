package cdp

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descLogBytes = prometheus.NewDesc("holdfast_cdp_log_bytes",
		"Bytes in the volume's local CDP log.", []string{"volume"}, nil)
	descLastSeq = prometheus.NewDesc("holdfast_cdp_last_seq",
		"Sequence number of the newest record in the volume's CDP log.", []string{"volume"}, nil)
	descWritten = prometheus.NewDesc("holdfast_cdp_written_bytes_total",
		"Bytes written by NBD clients to the volume since the agent started.", []string{"volume"}, nil)
	descLag = prometheus.NewDesc("holdfast_cdp_replication_lag_seconds",
		"Age of the oldest write the remote CDP log does not hold yet (the RPO now).", []string{"volume", "remote"}, nil)
	descLagRecords = prometheus.NewDesc("holdfast_cdp_replication_lag_records",
		"Records the remote CDP log does not hold yet.", []string{"volume", "remote"}, nil)
	descLagP99 = prometheus.NewDesc("holdfast_cdp_replication_lag_p99_seconds",
		"p99 of the write-to-remote-ack delay over the recent shipments.", []string{"volume", "remote"}, nil)
	descRemoteUp = prometheus.NewDesc("holdfast_cdp_replication_up",
		"1 when the last shipment to the remote CDP log succeeded.", []string{"volume", "remote"}, nil)
)

// Collector returns a Prometheus collector of the volumes' log sizes and
// replication lag, for the agent's /metrics.
func (m *Manager) Collector() prometheus.Collector { return collector{m} }

type collector struct{ m *Manager }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLogBytes, descLastSeq, descWritten, descLag, descLagRecords, descLagP99, descRemoteUp} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, in := range c.m.List(context.Background()) {
		ch <- prometheus.MustNewConstMetric(descLogBytes, prometheus.GaugeValue, float64(in.LogBytes), in.Name)
		ch <- prometheus.MustNewConstMetric(descLastSeq, prometheus.GaugeValue, float64(in.LastSeq), in.Name)
		ch <- prometheus.MustNewConstMetric(descWritten, prometheus.CounterValue, float64(in.WrittenBytes), in.Name)
		if r := in.Replication; r != nil {
			ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, r.LagSeconds, in.Name, r.Remote)
			ch <- prometheus.MustNewConstMetric(descLagRecords, prometheus.GaugeValue, float64(r.LagRecords), in.Name, r.Remote)
			ch <- prometheus.MustNewConstMetric(descLagP99, prometheus.GaugeValue, r.P99Seconds, in.Name, r.Remote)
			up := 1.0
			if r.State == "unreachable" {
				up = 0
			}
			ch <- prometheus.MustNewConstMetric(descRemoteUp, prometheus.GaugeValue, up, in.Name, r.Remote)
		}
	}
}
