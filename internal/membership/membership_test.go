package membership

import (
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/wire"
)

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// svc runs gossip as an agent service, publishing a fixed record.
type svc struct {
	meta string
	g    *Gossip
}

func (s *svc) Name() string { return "gossip-test" }
func (s *svc) Register(a *agent.Agent, wm *wire.Mux, api *http.ServeMux) error {
	cfg := DefaultConfig()
	cfg.Local, cfg.JoinInterval = true, 200*time.Millisecond
	cfg.Meta = func() []byte { return []byte(s.meta) }
	g, err := New(a, wm, cfg)
	s.g = g
	return err
}
func (s *svc) Run(ctx context.Context) error { return s.g.Run(ctx) }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestGossipOverWireSessions(t *testing.T) {
	root := t.TempDir()
	log := slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	names := []string{"a", "b", "c"}
	svcs := map[string]*svc{}
	stops := map[string]func(){}
	var caAddr string
	for i, n := range names {
		dir := filepath.Join(root, n)
		if i == 0 {
			if _, err := agent.Init(dir, agent.InitOptions{Name: n, Listen: "127.0.0.1:0"}); err != nil {
				t.Fatal(err)
			}
		} else {
			ca, _ := cluster.LoadCA(filepath.Join(root, "a"))
			tok, _ := ca.IssueToken(time.Minute)
			if _, err := agent.Join(context.Background(), dir, caAddr, tok, agent.InitOptions{Name: n, Listen: "127.0.0.1:0"}, log); err != nil {
				t.Fatal(err)
			}
		}
		c, _ := agent.LoadConfig(dir)
		c.HeartbeatInterval = agent.Duration{Duration: 200 * time.Millisecond}
		c.PeerTimeout = agent.Duration{Duration: time.Second}
		agent.WriteConfig(dir, c)
		s := &svc{meta: "record-of-" + n}
		a, err := agent.New(dir, agent.Options{Logger: log.With("n", n), Services: []agent.Service{s}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		var once sync.Once
		stop := func() { once.Do(func() { cancel(); <-done }) }
		t.Cleanup(stop)
		stops[n], svcs[n] = stop, s
		waitFor(t, n+" listening", func() bool {
			st, err := agent.NewClient(dir).Status(context.Background())
			if err == nil && i == 0 {
				caAddr = st.Listen
			}
			return err == nil
		})
	}
	for _, n := range names {
		waitFor(t, n+" to know every member's record", func() bool {
			ms := svcs[n].g.Members()
			if len(ms) != len(names) {
				return false
			}
			for _, m := range ms {
				if !m.Alive || string(m.Meta) != "record-of-"+m.Name {
					return false
				}
			}
			return true
		})
	}
	// A changed record spreads.
	svcs["b"].meta = "record-of-b-v2"
	if err := svcs["b"].g.UpdateMeta(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to see b's new record", func() bool {
		for _, m := range svcs["a"].g.Members() {
			if m.Name == "b" {
				return string(m.Meta) == "record-of-b-v2"
			}
		}
		return false
	})
	// A stopped agent leaves (or is found dead).
	stops["c"]()
	waitFor(t, "a to see c gone", func() bool {
		for _, m := range svcs["a"].g.Members() {
			if m.Name == "c" && m.Alive {
				return false
			}
		}
		return true
	})
}
