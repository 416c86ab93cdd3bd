package agent

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the agent's Prometheus metrics, on a registry of its own so
// that several agents in one process (tests) do not collide.
type metrics struct {
	reg      *prometheus.Registry
	sessions prometheus.Gauge
}

func newMetrics(a *Agent) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "holdfast_peer_sessions", Help: "Open wire sessions with peers.",
		}),
	}
	reg.MustRegister(m.sessions,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "holdfast_peers_connected", Help: "Peers with at least one open session.",
		}, func() float64 {
			n := 0
			for _, p := range a.Peers() {
				if p.Connected {
					n++
				}
			}
			return float64(n)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "holdfast_build_info", Help: "Build of the running agent (always 1).",
			ConstLabels: prometheus.Labels{"version": a.Versions()["agent"]},
		}, func() float64 { return 1 }),
	)
	return m
}

// Registry returns the registry feature services add their metrics to.
func (a *Agent) Registry() *prometheus.Registry { return a.metrics.reg }

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
