package agent

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/holdfast/holdfast/internal/buildinfo"
	"github.com/holdfast/holdfast/internal/wire"
)

// Status is the agent's answer to GET /v1/status.
type Status struct {
	Name      string             `json:"name"`
	Cluster   string             `json:"cluster"`
	Listen    string             `json:"listen"`
	Advertise string             `json:"advertise"`
	Build     buildinfo.Info     `json:"build"`
	Versions  wire.VersionVector `json:"versions"`
	Started   time.Time          `json:"started"`
	Uptime    string             `json:"uptime"`
	Labels    map[string]string  `json:"labels,omitempty"`
	Services  []string           `json:"services,omitempty"`
	Peers     []PeerStatus       `json:"peers"`
}

// Status returns the agent's current status.
func (a *Agent) Status() Status {
	a.mu.Lock()
	listen, adv, started := a.listenOn, a.advertiseLocked(), a.started
	a.mu.Unlock()
	st := Status{
		Name: a.cfg.Name, Cluster: a.id.ClusterID(), Listen: listen, Advertise: adv,
		Build: buildinfo.Get(), Versions: a.Versions(), Started: started,
		Uptime: time.Since(started).Round(time.Second).String(), Labels: a.cfg.Labels,
		Peers: a.Peers(),
	}
	for _, s := range a.services {
		st.Services = append(st.Services, s.Name())
	}
	return st
}

func (a *Agent) registerAPI() {
	a.api.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	a.api.Handle("GET /metrics", a.metrics.handler())
	a.api.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, a.Status())
	})
}

// WriteJSON writes v as a JSON response with the given status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// WriteError writes {"error": msg} with the given status code.
func WriteError(w http.ResponseWriter, code int, err error) {
	WriteJSON(w, code, map[string]string{"error": err.Error()})
}

func newTLSListener(ln net.Listener, c *tls.Config) net.Listener { return tls.NewListener(ln, c) }

// WriteText writes the status as `holdfast status` shows it.
func (st *Status) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "agent %s  cluster %s  version %s  up %s\n", st.Name, st.Cluster, st.Versions["agent"], st.Uptime)
	fmt.Fprintf(w, "listening on %s (advertised %s)\n", st.Listen, st.Advertise)
	if len(st.Peers) == 0 {
		_, err := fmt.Fprintln(w, "no peers")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tADDRESS\tSTATE\tRTT\tAGENT VERSION\tCONFIG")
	for _, p := range st.Peers {
		state := "disconnected"
		if p.Connected {
			state = "connected (mTLS)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.Address, state, p.RTT, p.Versions["agent"], p.Versions["config"])
	}
	return tw.Flush()
}
