package pool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/peer"
	"github.com/holdfast/holdfast/internal/repo/backend"
)

// MaxUploadSize bounds one repository file a backup client sends.
const MaxUploadSize = 320 << 20

// registerRepoAPI serves the local portion to backup clients: the
// repository backend operations over HTTP, on the agent's unix socket and,
// when api_listen is set, on its TCP API behind mTLS with the cluster CA
// (a client must hold a cluster certificate).
func (s *Service) registerRepoAPI(api *http.ServeMux) {
	fail := func(w http.ResponseWriter, err error) {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, backend.ErrNotExist):
			code = http.StatusNotFound
		case errors.Is(err, ErrPoolFull):
			code = http.StatusInsufficientStorage
		case errors.Is(err, errAdoptRefused):
			code = http.StatusBadRequest
		case errors.Is(err, errAdoptConflict):
			code = http.StatusConflict
		}
		agent.WriteError(w, code, err)
	}
	be := func(w http.ResponseWriter, r *http.Request) (backend.Backend, bool) {
		b, err := s.LocalBackend(r.PathValue("repo"))
		if err != nil {
			agent.WriteError(w, http.StatusBadRequest, err)
			return nil, false
		}
		return b, true
	}
	// file serves a route about one file of one repository: it resolves
	// the repository's backend and the file's handle, or answers 400.
	file := func(pattern string, fn func(w http.ResponseWriter, r *http.Request, b backend.Backend, h backend.Handle)) {
		api.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			b, ok := be(w, r)
			if !ok {
				return
			}
			h := handleOf(peer.FileRef{Type: r.PathValue("type"), Name: r.PathValue("name")})
			if err := h.Valid(); err != nil {
				agent.WriteError(w, http.StatusBadRequest, err)
				return
			}
			fn(w, r, b, h)
		})
	}
	s.registerAdoptAPI(api, fail)
	api.HandleFunc("POST /v1/pool/repos/{repo}", func(w http.ResponseWriter, r *http.Request) {
		b, ok := be(w, r)
		if !ok {
			return
		}
		if err := b.Create(r.Context()); err != nil {
			agent.WriteError(w, http.StatusConflict, err)
			return
		}
		agent.WriteJSON(w, http.StatusOK, map[string]string{"created": r.PathValue("repo")})
	})
	file("PUT /v1/pool/repos/{repo}/files/{type}/{name}", func(w http.ResponseWriter, r *http.Request, b backend.Backend, h backend.Handle) {
		data, err := io.ReadAll(io.LimitReader(r.Body, MaxUploadSize+1))
		if err != nil {
			agent.WriteError(w, http.StatusBadRequest, fmt.Errorf("reading upload: %w", err))
			return
		}
		if len(data) > MaxUploadSize {
			agent.WriteError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("file exceeds %d bytes", MaxUploadSize))
			return
		}
		if err := b.Save(r.Context(), h, data); err != nil {
			fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	file("GET /v1/pool/repos/{repo}/files/{type}/{name}", func(w http.ResponseWriter, r *http.Request, b backend.Backend, h backend.Handle) {
		off, _ := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
		n, _ := strconv.ParseInt(r.URL.Query().Get("length"), 10, 64)
		data, err := b.Load(r.Context(), h, off, n)
		if err != nil {
			fail(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(data)
	})
	file("DELETE /v1/pool/repos/{repo}/files/{type}/{name}", func(w http.ResponseWriter, r *http.Request, b backend.Backend, h backend.Handle) {
		if err := b.Remove(r.Context(), h); err != nil {
			fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	file("GET /v1/pool/repos/{repo}/stat/{type}/{name}", func(w http.ResponseWriter, r *http.Request, b backend.Backend, h backend.Handle) {
		fi, err := b.Stat(r.Context(), h)
		if err != nil {
			fail(w, err)
			return
		}
		agent.WriteJSON(w, http.StatusOK, fi)
	})
	api.HandleFunc("GET /v1/pool/repos/{repo}/list/{type}", func(w http.ResponseWriter, r *http.Request) {
		b, ok := be(w, r)
		if !ok {
			return
		}
		t := backend.FileType(r.PathValue("type"))
		if t == backend.ConfigFile || !slices.Contains(backend.AllTypes, t) {
			agent.WriteError(w, http.StatusBadRequest, fmt.Errorf("cannot list file type %q", t))
			return
		}
		out := []backend.FileInfo{}
		err := b.List(r.Context(), t, func(fi backend.FileInfo) error {
			out = append(out, fi)
			return nil
		})
		if err != nil && !errors.Is(err, backend.ErrNotExist) {
			fail(w, err)
			return
		}
		agent.WriteJSON(w, http.StatusOK, out)
	})
}

// AgentBackend is a repository backend in an agent's local pool portion,
// reached over the agent's API: a backup client's view of its server.
// Pack files of at least AgentBackendOptions.BulkThreshold bytes travel by
// bulk transfer to the agent's wire listener and are then adopted into the
// repository (see bulkleg.go); everything else goes through the API.
type AgentBackend struct {
	hc    *http.Client
	base  string // ".../v1/pool/repos/<repo>"
	loc   string
	log   *slog.Logger
	bulk  *bulkLeg // nil: packs go through the API
	packs packCounters
}

// AgentBackendOptions configure DialAgentBackendWith.
type AgentBackendOptions struct {
	// Bulk chooses how pack files travel: "auto" or "" (by bulk transfer
	// when the agent is reached over TCP and runs the transfer service;
	// its wire address is the API host with the port the agent reports),
	// "off" (always through the API), or HOST:PORT of the agent's wire
	// listener (by bulk transfer there, also to a local agent).
	Bulk string
	// BulkThreshold is the smallest pack that goes by bulk transfer
	// (default DefaultBulkThreshold).
	BulkThreshold int64
	// Logger receives events (default: discarded).
	Logger *slog.Logger
}

// DefaultBulkThreshold is the smallest pack file sent by bulk transfer:
// below it a single API request costs less than a transfer's round trips.
const DefaultBulkThreshold = 1 << 20

// DialAgentBackend returns a backend for repository repo on the agent
// named by server: a state directory of a local agent (its unix socket),
// or host:port of an agent's TCP API, reached with mTLS using the cluster
// identity in stateDir (made by `holdfast cluster join`). Packs travel as
// AgentBackendOptions' defaults say.
func DialAgentBackend(server, stateDir, repo string, log *slog.Logger) (*AgentBackend, error) {
	return DialAgentBackendWith(server, stateDir, repo, AgentBackendOptions{Logger: log})
}

// DialAgentBackendWith is DialAgentBackend with options.
func DialAgentBackendWith(server, stateDir, repo string, o AgentBackendOptions) (*AgentBackend, error) {
	if err := peer.ValidName(repo); err != nil {
		return nil, fmt.Errorf("repository name: %w", err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.BulkThreshold <= 0 {
		o.BulkThreshold = DefaultBulkThreshold
	}
	bulkAddr := ""
	switch o.Bulk {
	case "", "auto", "off":
	default:
		if _, _, err := net.SplitHostPort(o.Bulk); err != nil {
			return nil, fmt.Errorf("bulk address %q: want auto, off or HOST:PORT of the agent's wire listener: %w", o.Bulk, err)
		}
		bulkAddr = o.Bulk
	}
	if fi, err := os.Stat(server); err == nil && fi.IsDir() {
		sock := filepath.Join(server, agent.SocketFile)
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
		b := &AgentBackend{hc: hc, base: "http://agent/v1/pool/repos/" + repo, loc: "agent:" + server + "/" + repo, log: log}
		if bulkAddr != "" {
			// A local agent: its own identity is a cluster member's.
			if stateDir == "" {
				stateDir = server
			}
			id, err := cluster.Load(stateDir)
			if err != nil {
				return nil, fmt.Errorf("loading a cluster identity from %s for bulk transfers: %w", stateDir, err)
			}
			b.bulk = newBulkLeg(b, id, "", bulkAddr, o.BulkThreshold, log)
		}
		return b, nil
	}
	host, _, err := net.SplitHostPort(server)
	if err != nil {
		return nil, fmt.Errorf("server %q: want an agent state directory or host:port of its API: %w", server, err)
	}
	id, err := cluster.Load(stateDir)
	if err != nil {
		return nil, fmt.Errorf("loading this client's cluster identity from %s (run `holdfast cluster join` first): %w", stateDir, err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: id.ClientTLS(log), ForceAttemptHTTP2: true}}
	b := &AgentBackend{hc: hc, base: "https://" + server + "/v1/pool/repos/" + repo, loc: "agent:" + server + "/" + repo, log: log}
	if o.Bulk != "off" {
		b.bulk = newBulkLeg(b, id, host, bulkAddr, o.BulkThreshold, log)
	}
	return b, nil
}

func (b *AgentBackend) url(kind string, h backend.Handle) string {
	name := h.Name
	if h.Type == backend.ConfigFile {
		name = configName
	}
	return b.base + "/" + kind + "/" + url.PathEscape(string(h.Type)) + "/" + url.PathEscape(name)
}

func (b *AgentBackend) do(ctx context.Context, method, u string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, b.loc, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, MaxUploadSize+1))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		msg := strings.TrimSpace(string(out))
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(out, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		switch resp.StatusCode {
		case http.StatusNotFound:
			return nil, fmt.Errorf("%s: %w", msg, backend.ErrNotExist)
		case http.StatusInsufficientStorage:
			return nil, fmt.Errorf("%s: %w", msg, ErrPoolFull)
		}
		return nil, fmt.Errorf("agent: %s (%s)", msg, resp.Status)
	}
	return out, nil
}

// Location implements backend.Backend.
func (b *AgentBackend) Location() string { return b.loc }

// Create implements backend.Backend.
func (b *AgentBackend) Create(ctx context.Context) error {
	_, err := b.do(ctx, "POST", b.base, nil)
	return err
}

// Save implements backend.Backend.
func (b *AgentBackend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	_, err := b.do(ctx, "PUT", b.url("files", h), data)
	return err
}

// Load implements backend.Backend.
func (b *AgentBackend) Load(ctx context.Context, h backend.Handle, offset, length int64) ([]byte, error) {
	return b.do(ctx, "GET", fmt.Sprintf("%s?offset=%d&length=%d", b.url("files", h), offset, length), nil)
}

// Stat implements backend.Backend.
func (b *AgentBackend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	var fi backend.FileInfo
	out, err := b.do(ctx, "GET", b.url("stat", h), nil)
	if err != nil {
		return fi, err
	}
	return fi, json.Unmarshal(out, &fi)
}

// List implements backend.Backend.
func (b *AgentBackend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	out, err := b.do(ctx, "GET", b.base+"/list/"+url.PathEscape(string(t)), nil)
	if err != nil {
		return err
	}
	var fis []backend.FileInfo
	if err := json.Unmarshal(out, &fis); err != nil {
		return fmt.Errorf("decoding list of %s: %w", t, err)
	}
	for _, fi := range fis {
		if err := fn(fi); err != nil {
			return err
		}
	}
	return nil
}

// Remove implements backend.Backend.
func (b *AgentBackend) Remove(ctx context.Context, h backend.Handle) error {
	_, err := b.do(ctx, "DELETE", b.url("files", h), nil)
	return err
}

// Close implements backend.Backend.
func (b *AgentBackend) Close() error {
	b.hc.CloseIdleConnections()
	if b.bulk != nil {
		return b.bulk.close()
	}
	return nil
}
